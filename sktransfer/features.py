"""PretrainedFeatureTransformer: a frozen backbone as a scikit-learn transformer."""

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._device import resolve_device, resolve_precision, seeded
from ._weights_cache import load_backbone_cached
from .backbones.huggingface import pool_tokens
from .cache import FeatureCache, output_key
from .inference import predict_batches
from .inputs import estimator_samples

POOLINGS = ("avg", "max", "cls")


class PretrainedFeatureTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                                   BaseEstimator):
    """Embed images, text or tensors with a frozen pretrained network.

    Feature transfer: the backbone stays as it was trained; its embeddings
    (or the pooled, concatenated features of chosen layers) feed any
    scikit-learn model placed after it in a :class:`~sklearn.pipeline.Pipeline`.

    Parameters
    ----------
    backbone : str, nn.Module, callable or fitted estimator, default="torchvision:resnet18"
        ``"torchvision:<name>"``, ``"timm:<name>"``, ``"hf:<model id or local
        directory>"``, an ``nn.Module`` (its forward output is the embedding),
        a zero-argument callable returning one, or a fitted sktransfer
        estimator whose backbone is reused.
    weights : "DEFAULT", str, None or path, default="DEFAULT"
        ``"DEFAULT"`` loads the source's pretrained weights through its usual
        cache (for a module or fitted estimator: the weights it has); a
        torchvision tag such as ``"IMAGENET1K_V2"``; ``None`` for random
        initialization; or a path to a local ``.pt``/``.pth``/``.safetensors``
        state dict.
    layers : list of str, optional
        ``None`` gives the backbone's embedding. A list of module names (see
        ``backbone_.layer_names``) gives each layer's output, pooled over its
        spatial or token axes and concatenated in the order given
        (multi-layer feature fusion).
    pooling : {"avg", "max", "cls"}, default="avg"
        How layer outputs are pooled, and how a text encoder pools its tokens
        (``"avg"`` is mean pooling over real tokens, ``"cls"`` the first token).
    batch_size : int, default=32
        Samples per forward pass.
    device : str, default="auto"
        ``"auto"`` uses CUDA, then Apple MPS, then the CPU; or any torch
        device string.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype for the forward pass; ``"auto"`` is bf16 (fp16 on GPUs
        without bf16) on CUDA and fp32 elsewhere.
    num_workers : int, default=0
        DataLoader worker processes that decode and preprocess batches.
    image_size : int, optional
        Crop side fed to an image backbone instead of its weights' own.
    random_state : int, RandomState or None, default=None
        Seeds the random initialization (``weights=None``, lazy modules).
    verbose : bool, default=False
        Show a progress bar over batches.
    cache : str, os.PathLike, joblib.Memory or None, default=None
        Where to keep embeddings between calls: a directory or a
        ``joblib.Memory``. Each sample is stored under a digest of its content
        together with everything that changes its embedding (backbone, weights
        by content, layers, pooling, preprocessing, precision), so a search
        over the model after this step embeds each distinct sample once, and
        any change that alters the output is a miss, never a stale hit.

    Attributes
    ----------
    backbone_ : Backbone
        The loaded network, its preprocessing and layer groups.
    n_features_out_ : int
        Width of the output.
    n_features_in_ : int
        Columns seen in ``fit`` (tensor backbones given 2-D input only).

    See Also
    --------
    FineTunedClassifier : trains the backbone too (parameter transfer).

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import PretrainedFeatureTransformer
    >>> X = np.random.RandomState(0).rand(6, 4).astype(np.float32)
    >>> pft = PretrainedFeatureTransformer(nn.Sequential(nn.Linear(4, 3), nn.Tanh()))
    >>> pft.fit_transform(X).shape
    (6, 3)
    """

    def __init__(self, backbone="torchvision:resnet18", weights="DEFAULT", layers=None,
                 pooling="avg", batch_size=32, device="auto", precision="auto", num_workers=0,
                 image_size=None, random_state=None, verbose=False, cache=None):
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.image_size = image_size
        self.random_state = random_state
        self.verbose = verbose
        self.cache = cache

    def fit(self, X, y=None):
        """Load the backbone and check ``X``; the network is not trained.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
            Samples of the kind the backbone takes.
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        with seeded(self.random_state):
            # Read from disk once per process, a private copy per fit.
            backbone = load_backbone_cached(self.backbone, self.weights, pooling=self.pooling,
                                            image_size=self.image_size,
                                            random_state=self.random_state)
            self.backbone_ = backbone
            samples = self._samples(X, reset=True)
            missing = [n for n in (self.layers or ())
                       if n not in dict(backbone.module.named_modules())]
            if missing:
                del self.backbone_
                raise ValueError(f"layers {missing} are not modules of {backbone.spec}; "
                                 f"its layers are {backbone.layer_names}")
            if self.layers or backbone.out_dim is None:
                # One tiny forward pass tells the output width (and initializes
                # lazy modules under the seed).
                probe = self._embed(samples.subset(np.arange(min(2, len(samples)))))
                self.n_features_out_ = probe.shape[1]
            else:
                self.n_features_out_ = backbone.out_dim
        return self

    def transform(self, X):
        """Embed ``X`` a batch at a time.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self, "backbone_")
        samples = self._samples(X, reset=False)
        if self.cache is None:
            return self._embed(samples)
        precision = resolve_precision(self.precision, resolve_device(self.device))
        key = output_key(self.backbone_, layers=self.layers, pooling=self.pooling,
                         precision=precision)
        return FeatureCache(self.cache).embed(samples, key, self._embed)

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.input_tags.allow_nan = False
        return tags

    # -- internals -------------------------------------------------------

    def _check_params(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {POOLINGS}")
        if self.layers is not None and (isinstance(self.layers, str) or not self.layers):
            raise ValueError(f"layers must be None or a non-empty list of layer names; "
                             f"got {self.layers!r}")
        for name in ("batch_size",):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(self.num_workers, (int, np.integer)) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0; got {self.num_workers!r}")
        if self.cache is not None:
            FeatureCache(self.cache)  # raises for what cannot be a cache

    def _samples(self, X, reset):
        return estimator_samples(self, X, self.backbone_, reset=reset)

    def _embed(self, samples):
        backbone = self.backbone_
        device = resolve_device(self.device)

        def pooled_layers(_, inputs):
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            return torch.cat([_pool(tap.outputs[name], self.pooling, mask)
                              for name in self.layers], dim=1)

        with _LayerTap(backbone.module, self.layers) as tap:
            return predict_batches(
                backbone.module, samples, backbone.preprocess, batch_size=self.batch_size,
                device=device, amp_dtype=resolve_precision(self.precision, device),
                num_workers=self.num_workers, output=pooled_layers if self.layers else None,
                verbose=self.verbose,
                desc="embedding")


class _LayerTap:
    """Forward hooks that keep the outputs of the named submodules."""

    def __init__(self, module, names):
        self.module = module
        self.names = list(names or ())
        self.outputs = {}
        self._handles = []

    def __enter__(self):
        for name in self.names:
            sub = self.module.get_submodule(name)
            self._handles.append(sub.register_forward_hook(self._keep(name)))
        return self

    def _keep(self, name):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            elif hasattr(output, "last_hidden_state"):
                output = output.last_hidden_state
            self.outputs[name] = output
        return hook

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()


def _pool(output, pooling, mask=None):
    """Pool one layer's output into ``(B, F)``.

    ``(B, C, H, W)`` maps pool over space; ``(B, T, D)`` token sequences pool
    over tokens (masked by ``mask`` for text); ``(B, F)`` passes through.
    """
    if output.ndim == 2:
        return output
    if output.ndim == 3:
        return pool_tokens(output, mask, pooling)
    if pooling == "cls":
        raise ValueError(f"pooling='cls' needs token outputs (B, T, D); a layer gave "
                         f"shape {tuple(output.shape)}; use 'avg' or 'max'")
    flat = output.flatten(2)
    return flat.mean(2) if pooling == "avg" else flat.amax(2)
