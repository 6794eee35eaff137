"""PretrainedFeatureTransformer: a frozen backbone as a scikit-learn transformer."""

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ._utils.seeding import seeded
from ._utils.signature import positional_deprecated
from ._utils.validation import (BACKBONE_CONSTRAINTS, Checked, InvalidParameterError, Options,
                                validate_params)
from .backbones import POOLINGS, load_backbone_cached
from .feature_cache import FeatureCache, output_key, snapshots_key
from .chaining import KeepsTrainedBackbone
from .engine.resident import ENGINE_CONSTRAINTS, FIT_PROBE, ServesFromEngine, features_agree
from .inference import predict_batches
from .inputs import Collate, estimator_samples
from .persistence.modules import pack_modules, unpack_modules
from .scaling import LazyOutput, is_lazy_collection, lazy_call
from .training.weights import check_sample_weight

def _check_layers(layers):
    if isinstance(layers, str) or not layers:
        raise InvalidParameterError(f"layers must be None or a non-empty list of layer names; "
                                    f"got layers={layers!r}")
    if not all(isinstance(n, str) for n in layers):
        raise InvalidParameterError(f"layers must be a list of layer names (strings); "
                                    f"got layers={layers!r}")


class PretrainedFeatureTransformer(KeepsTrainedBackbone, ServesFromEngine,
                                   ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                                   BaseEstimator):
    """Embed images, text, sound or tensors with a frozen pretrained network.

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
    pooling : str, default="auto"
        ``"auto"`` gives the embedding the model's authors configured: a
        sentence-transformers pipeline's own pooling (then its ``Dense`` and
        ``Normalize``), mean pooling for other text encoders, an image
        network's own global pool, a module's forward output; with
        ``layers``, the mean over each layer's spatial or token axes.
        Otherwise, how tokens or layer outputs are pooled: ``"avg"`` (or
        ``"mean"``) over real tokens or spatial positions, ``"max"``,
        ``"cls"`` (the first token), and for token states
        sentence-transformers' ``"mean_sqrt_len_tokens"``,
        ``"weightedmean"`` and ``"lasttoken"``. For a Hugging Face image
        transformer (ViT, DINOv2, CLIP, SigLIP), ``"auto"`` is the embedding
        its authors document, ``"cls"`` its class token, ``"avg"`` /
        ``"max"`` pool its patch tokens only (not the class or register
        tokens, with ``layers`` too) and ``"cls+avg"`` gives class token
        and patch mean side by side (see :doc:`/backbones`). For an image backbone's
        embedding (``layers=None``), ``"max"`` replaces its global average
        pool by a global max pool over the last feature map (a network
        without one, such as a ViT, raises a ValueError). A module
        backbone's forward output is its embedding, so only ``"auto"`` and
        ``"avg"`` apply to it without ``layers``.
    prompt : str, optional
        For text encoders, a text prepended to every input, as
        sentence-transformers' prompts are: the name of one of the model's
        prompts (``config_sentence_transformers.json``, e.g. ``"query"``)
        or the prompt text itself; ``""`` for none. ``None`` keeps the
        model's default prompt, if it names one (or, for a fitted estimator
        given as ``backbone``, the prompt it was fitted with).
    batch_size : int, default=32
        Samples per forward pass.
    device : str, default="auto"
        ``"auto"`` uses CUDA, then Apple MPS, then the CPU; or any torch
        device string.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype for the forward pass; ``"auto"`` is bf16 (fp16 on GPUs
        without bf16) on CUDA and fp32 elsewhere, except with
        ``runtime="openvino"`` on a CPU with bf16 units, where ``fit`` runs
        a probe on up to 256 fit samples and keeps bf16 only if its
        embeddings agree with fp32's (least cosine similarity >= 0.9999;
        see ``precision_``).
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
    runtime : {"torch", "compile", "onnx", "openvino"}, default="torch"
        What runs the network in ``transform``: PyTorch eagerly;
        ``torch.compile`` (compiled at the first call, faster on repeated
        calls of the same shapes); ONNX Runtime (exported at the first
        call; needs ``pip install "sktransfer[onnx]"``; runs in float32); or
        OpenVINO on the CPU (the same export, compiled by OpenVINO; needs
        ``pip install "sktransfer[openvino]"``; float32, or bf16 with
        ``precision="bf16"`` where the CPU has bf16 units). See
        :doc:`/speed` for which to pick.
    quantize : {None, "int8"}, default=None
        ``"int8"``: with ``runtime="onnx"``, ONNX Runtime's dynamic
        quantization of the exported graph (int8 weights, activations
        quantized per batch); with ``runtime="openvino"``, NNCF's static
        quantization, calibrated in ``fit`` on at most 300 of its samples.
        Faster on the CPU, embeddings a little less exact. The CPU only.
    sampling_rate : int, optional
        For audio backbones, the sampling rate (Hz) of array inputs; every
        clip is resampled to the model's own rate. Required for arrays (a
        rate is never assumed); files carry their own rate.
    max_duration : "auto", float or None, default="auto"
        For audio backbones, the seconds kept of each clip: longer clips are
        truncated to their start. ``"auto"``: the model's window (Whisper
        30 s, AST about 10 s) or 30 s for waveform models; ``None``: whole
        clips (their frames' attention grows with the square of the length).

    Attributes
    ----------
    backbone_ : Backbone
        The loaded network, its preprocessing and layer groups.
    n_features_out_ : int
        Width of the output.
    precision_ : {"fp32", "bf16"}
        With ``runtime="openvino"`` and ``precision="auto"`` only: the
        precision the fit's probe chose; ``precision_agreement_`` (where the
        probe ran: on CPUs with bf16 units) is the least cosine similarity
        between bf16 and fp32 embeddings it measured.
    int8_networks_ : dict
        With ``runtime="openvino"`` and ``quantize="int8"`` only: the network
        NNCF calibrated at ``fit`` (OpenVINO's format, with the settings and
        weights it holds for); ``int8_agreement_`` is the least cosine
        similarity between its embeddings and float32's on the calibration
        samples.
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

    #: What each parameter takes, checked at fit (see sktransfer._utils.validation).
    # fit ignores sample_weight: a weighted pipeline need not ask this step.
    __metadata_request__fit = {"sample_weight": False}

    _parameter_constraints = {
        **BACKBONE_CONSTRAINTS,
        "layers": [None, Checked(_check_layers)],
        "pooling": [Options(POOLINGS)],
        "cache": [None, Checked(FeatureCache)],
        **ENGINE_CONSTRAINTS,
    }

    @positional_deprecated
    def __init__(self, backbone="torchvision:resnet18", *, weights="DEFAULT", layers=None,
                 pooling="auto", prompt=None, batch_size=32, device="auto", precision="auto",
                 num_workers=0, image_size=None, random_state=None, verbose=False, cache=None,
                 runtime="torch", quantize=None, sampling_rate=None, max_duration="auto"):
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.pooling = pooling
        self.prompt = prompt
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.image_size = image_size
        self.random_state = random_state
        self.verbose = verbose
        self.cache = cache
        self.runtime = runtime
        self.quantize = quantize
        self.sampling_rate = sampling_rate
        self.max_duration = max_duration

    def fit(self, X, y=None, sample_weight=None):
        """Load the backbone and check ``X``; the network is not trained.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings
            Samples of the kind the backbone takes.
        y : ignored
        sample_weight : array-like of shape (n_samples,), scalar or None, default=None
            Checked and ignored. Accepted, as unsupervised scikit-learn transformers accept it, so
            that a weighted fit of a pipeline can pass it; nothing is trained.
            Not requested under metadata routing (the default request is
            False), so a pipeline routes weights to its final estimator
            without asking this step.

        Returns
        -------
        self
        """
        validate_params(self)
        self._check_engine_params()
        self.release_engine()  # the engines of an earlier fit
        with seeded(self.random_state):
            # Read from disk once per process, a private copy per fit.
            backbone = load_backbone_cached(self.backbone, self.weights, pooling=self.pooling,
                                            image_size=self.image_size,
                                            random_state=self.random_state)
            if not self.layers:
                backbone.set_pooling(self.pooling)
            backbone.use_prompt(self.prompt)
            self.backbone_ = backbone
            samples = self._samples(X, reset=True)
            # Ignored, but checked: a weight vector that is wrong is an error anywhere.
            check_sample_weight(sample_weight, len(samples))
            missing = [n for n in (self.layers or ())
                       if n not in dict(backbone.module.named_modules())]
            if missing:
                del self.backbone_
                raise ValueError(f"layers {missing} are not modules of {backbone.spec}; "
                                 f"its layers are {backbone.layer_names}")
            _initialize_lazy_layers(backbone, samples)
            # Before the width probe: the engines it builds are then the fitted ones.
            probe = samples.subset(np.arange(min(FIT_PROBE, len(samples))))
            self._settle_engines(lambda purpose: self._embed(probe), features_agree)
            if self.layers or backbone.out_dim is None:
                # One tiny forward pass tells the output width (through the
                # cache when there is one, so a cached refit embeds nothing).
                probe = self._embed_or_look_up(samples.subset(np.arange(min(2, len(samples)))))
                self.n_features_out_ = probe.shape[1]
            else:
                self.n_features_out_ = backbone.out_dim
            self._fitted_output = _output_settings(self.layers, self.pooling)
        return self

    def transform(self, X):
        """Embed ``X`` a batch at a time.

        Parameters
        ----------
        X : array-like, list of paths, PIL images or strings, or a Dask collection
            A Dask array, DataFrame, Series or bag of such samples is
            embedded lazily on the Dask cluster, the model sent to each
            worker once (see :doc:`/scaling`).

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
            For a Dask collection, the matching lazy one: a Dask array
            ``(n_samples, n_features_out_)``, a Dask DataFrame with the
            columns of ``get_feature_names_out()``, or a bag of rows.

        Raises
        ------
        NotFittedError
            Before ``fit``; and after ``set_params`` changed ``layers``, or
            ``pooling`` in a way the fitted network or ``n_features_out_``
            cannot follow (the embedding's pooling, a wider one of layers):
            fit again.
        """
        check_is_fitted(self, "backbone_")
        self._check_output_settings()
        if is_lazy_collection(X):
            return lazy_call(self, "transform", X, LazyOutput(
                self.n_features_out_, np.float32, self.get_feature_names_out()))
        return self._embed_or_look_up(self._samples(X, reset=False))

    # Pickling: a module given as ``backbone`` travels as its config and
    # arrays, like ``backbone_`` does (no torch.save bytes in the pickle).
    def __getstate__(self):
        return pack_modules(dict(super().__getstate__()), ("backbone",))

    def __setstate__(self, state):
        super().__setstate__(unpack_modules(state))

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.input_tags.allow_nan = False
        return tags

    # -- internals -------------------------------------------------------

    def _check_output_settings(self):
        """Refuse ``layers`` or ``pooling`` changed since fit in a way the fit cannot follow.

        ``n_features_out_`` and ``get_feature_names_out()`` (so the metadata
        of lazy outputs) describe the fit, and without ``layers`` the fit
        built the pooling into its network. Chosen layers are pooled per
        call, so a pooling of the same width still applies at once.
        """
        fitted = getattr(self, "_fitted_output", None)
        if fitted is None:
            return  # fitted by a version that did not record it
        name = _changed_output(fitted, _output_settings(self.layers, self.pooling))
        if name is not None:
            raise NotFittedError(
                f"This {type(self).__name__} was fitted with {name}={fitted[name]!r} and now "
                f"has {name}={getattr(self, name)!r}: its network, n_features_out_ and "
                f"get_feature_names_out() describe the fit; call fit again to use the new "
                f"{name}.")

    _network_identity = staticmethod(snapshots_key)

    def _samples(self, X, reset):
        # getattr: transformers pickled before audio support have neither parameter.
        return estimator_samples(self, X, self.backbone_, reset=reset,
                                 sampling_rate=getattr(self, "sampling_rate", None),
                                 max_duration=getattr(self, "max_duration", "auto"))

    def _embed_or_look_up(self, samples):
        """Embeddings of ``samples``, through the feature cache when there is one."""
        if self.cache is None:
            return self._embed(samples)
        # The key and the numbers stored under it come from one snapshot of the
        # network (the one the engine is built from), never the key from the
        # live module and the numbers from an engine built before it changed.
        module = self.backbone_.module
        snapshot = self._model_snapshot(module)
        key = output_key(self.backbone_, layers=self.layers, pooling=self.pooling,
                         precision=self._check_engine_params(fit=False), runtime=self.runtime,
                         quantize=self.quantize, snapshot=snapshot,
                         calibration=self._int8_digest("transform"))

        def compute(part):
            features = self._embed(part)
            if self._model_snapshot(module) is not snapshot:
                # Changed by another thread meanwhile: these numbers may not be
                # the key's, so they are not stored.
                raise RuntimeError("the backbone's module changed while transform was "
                                   "running; call transform again")
            return features

        return FeatureCache(self.cache).embed(samples, key, compute)

    def _embed(self, samples):
        backbone = self.backbone_
        layers = list(self.layers) if self.layers else None
        # The engine is built on the first call and reused; the layer taps
        # and their pooling are part of it (its own copy of the network, so
        # threads sharing this estimator never see each other's batches).
        engine = self._engine_for(
            "transform", (backbone.module,), _itself, layers=layers,
            output=backbone.layer_pooling(layers, self.pooling) if layers else None,
            settings=(self.pooling,))
        return predict_batches(engine, samples, backbone.preprocess, batch_size=self.batch_size,
                               num_workers=self.num_workers, verbose=self.verbose,
                               desc="embedding")


def _output_settings(layers, pooling):
    """The parameters that the fitted network and output width depend on."""
    return {"layers": list(layers) if layers else None, "pooling": pooling}


def _changed_output(fitted, now):
    """The parameter of ``now`` that an estimator fitted with ``fitted`` cannot follow, or None."""
    if now["layers"] != fitted["layers"]:
        return "layers"
    if now["pooling"] == fitted["pooling"]:
        return None
    same_width = _layer_width_factor(now["pooling"]) == _layer_width_factor(fitted["pooling"])
    return None if now["layers"] and same_width else "pooling"


def _layer_width_factor(pooling):
    # "cls+avg" puts an image transformer's class token beside its patch
    # mean; every other pooling gives one vector per layer.
    return 2 if pooling == "cls+avg" else 1


def _itself(module):
    return module


def _initialize_lazy_layers(backbone, samples):
    """Give lazy layers their shapes with one forward pass of the fitted module itself.

    Inference runs on private copies that must not change the fitted model, so
    this happens here, at fit, under the fit's seed. The module is put in
    eval mode first: the network is frozen, and a training-mode pass would
    update BatchNorm statistics.
    """
    module = backbone.module
    if not any(torch.nn.parameter.is_lazy(p) for p in module.parameters()):
        return
    module.eval()
    inputs = Collate(backbone.preprocess)(samples.__getitems__(np.arange(min(2, len(samples)))))
    with torch.no_grad():
        module(inputs)
