"""Hugging Face speech and audio encoders: the model and its own feature extractor.

Three shapes of input, each prepared by the model's ``AutoFeatureExtractor``
(sampling rate, normalization, log-mel features) a batch at a time:

- waveform models (wav2vec2, HuBERT, WavLM, data2vec-audio, SEW,
  UniSpeech): raw samples, padded to the batch's longest clip;
- Whisper: the encoder alone, on 30 s log-mel windows (the extractor pads
  every clip to the window, as Whisper was trained);
- the Audio Spectrogram Transformer (AST): a fixed-size filter-bank image.

The embedding (``pooling="auto"``) is the mean of the last hidden states
over the frames that hold sound: padding never enters it. Frames are
counted from each clip's length by the model's own convolution arithmetic
(``_get_feat_extract_output_lengths`` for the waveform models; Whisper's
two convolutions over its mel frames), carried with the batch as a
``frame_mask`` so that ``layers=`` pools the same frames.

AST's embedding is its own pooled output (the mean of its CLS and
distillation tokens), which is what its classifier reads. Its other tokens
are patches of the filter-bank image, each spanning frequencies and a few
frames of time, over a fixed window the extractor pads every clip to (about
10 s for the released models). Its ``frame_mask`` is over tokens: the two
summary tokens, and the patches whose first frame holds sound (so a patch
straddling the end of the clip counts, a patch of padding alone does not).
Other poolings and ``layers=`` average those tokens: a 1 s clip's features
are not 90 % padding. The model's own attention still sees the whole window,
as it was trained to.

Padding and the attention mask: a waveform model whose extractor returns an
attention mask (``feat_extract_norm="layer"`` checkpoints) gets one, and a
clip padded in a batch gives its embedding alone. A model whose extractor
does not (``"group"`` normalization: wav2vec2-base, HuBERT-base) cannot
ignore padding (its first layer normalizes over the whole time axis), nor
can data2vec-audio (its stacked positional convolutions carry the padded
frames' outputs into the last valid ones), so
:func:`sktransfer.inference.batch_order` puts only clips of equal length in
one batch for it (``pads_exactly`` is False): exact, at the cost of smaller
batches when lengths vary.
"""

import copy
import os

import torch
from torch import nn

from .._utils.files import read_folder, temporary_folder, write_folder
from .base import Backbone
from .groups import ordered_param_groups
from .hf_loading import (config_from_dict, config_to_dict, import_transformers, load_model,
                         quiet_loading, skipped_init)
from .pooling import PoolingEncoder, pool_tokens, token_pooling_modes
from .registry import register_preprocess
from .weights import hub_cache_location, weights_unavailable

_MODEL_INPUTS = ("input_values", "input_features", "attention_mask")
#: Whisper's two convolutions over mel frames as (kernel, stride, padding).
_WHISPER_CONVS = ((3, 1, 1), (3, 2, 1))
#: The longest clip a waveform model is given by default (seconds): its
#: attention grows with the square of the frames (50 per second).
DEFAULT_MAX_DURATION = 30.0


def conv_lengths(lengths, convs):
    """Output lengths of 1-D convolutions ``(kernel, stride, padding)`` applied in turn.

    The arithmetic of ``torch.nn.Conv1d``, the same as transformers'
    ``_get_feat_extract_output_lengths``.

    Examples
    --------
    >>> import torch
    >>> conv_lengths(torch.tensor([400, 16000]), [(10, 5, 0), (3, 2, 0)]).tolist()
    [39, 1599]
    """
    for kernel, stride, padding in convs:
        lengths = torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    return lengths


class AudioEncoder(PoolingEncoder, nn.Module):
    """A Hugging Face audio encoder whose forward pools its frames into ``(B, D)``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The base model (for Whisper: its encoder).
    pooling : str or sequence of str, default="auto"
        ``"auto"``: the mean over frames with sound (AST: its pooled
        output); or token pooling modes (see
        :func:`~sktransfer.backbones.pooling.pool_tokens`) over those frames.
    """

    hf_family = "audio"

    def __init__(self, model, pooling="auto"):
        super().__init__()
        self.model = model
        self.pooling = pooling

    @property
    def pooling(self):
        return self._pooling

    @pooling.setter
    def pooling(self, value):
        self._pooling = ("auto",) if value in (None, "auto") else token_pooling_modes(value)

    def set_pooling(self, pooling, spec=None):
        """Pool tokens by ``pooling`` from now on (a ValueError lists the token poolings)."""
        self.pooling = pooling

    def extra_repr(self):
        # Part of the feature cache's key (module_fingerprint reads the repr).
        return f"pooling={self._pooling}"

    def frozen_by_default(self):
        """Modules that fine-tuning leaves as pretrained unless told otherwise
        (``freeze="auto"``): the convolutional feature encoder of a waveform
        model, as speech fine-tuning does."""
        return ("model.feature_extractor",) if hasattr(self.model, "feature_extractor") else ()

    def channels_first_layers(self, layers):
        """Those of ``layers`` that are the convolutional feature encoder or inside it:
        their outputs are ``(B, C, T)``, the others' ``(B, T, D)``. Known by module,
        not by shape: a clip of exactly C frames would look like the other layout."""
        encoder = getattr(self.model, "feature_extractor", None)
        inside = set() if encoder is None else {id(m) for m in encoder.modules()}
        return frozenset(name for name in layers if id(self.get_submodule(name)) in inside)

    def forward(self, inputs):
        out = self.model(**{k: v for k, v in inputs.items() if k in _MODEL_INPUTS})
        if self._pooling == ("auto",) and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output  # AST: the mean of its CLS and distillation tokens
        hidden = out.last_hidden_state
        mask = inputs.get("frame_mask")
        modes = "mean" if self._pooling == ("auto",) else self._pooling
        return pool_tokens(hidden, None if mask is None else mask[:, :hidden.shape[1]], modes)

    def out_dim(self):
        """Width of the embedding."""
        config = self.model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        return None if hidden is None else hidden * max(1, len(self._pooling))


class AudioFeatures:
    """The model's feature extractor over a batch of clips at its rate, with a frame mask.

    Parameters
    ----------
    extractor : transformers feature extractor
    shape : {"waveform", "whisper", "spectrogram"}
        What the model takes (see the module docstring).
    frame_convs : list of (int, int, int)
        The model's convolutions over its input, as (kernel, stride,
        padding): they turn each clip's valid length into its valid frames.
    pass_attention_mask : bool
        Whether the model is given the sample-level attention mask (the
        extractor's own ``return_attention_mask``).
    padding_leaks : bool, default=False
        True when padded frames reach valid ones even with the mask
        (data2vec-audio's stacked positional convolutions see the padded
        frames' outputs): such a model, like one without a mask, gets
        batches of equal-length clips.
    name_or_path : str
        Where the extractor came from (part of cache keys).
    patch_strides : (int, int, int), optional
        For AST: its patches' ``(size, frequency stride, time stride)``,
        which give the tokens that hold sound (see the module docstring).
        Without them (files saved before they existed) AST batches carry no
        ``frame_mask`` and every token is pooled.
    """

    def __init__(self, extractor, shape, frame_convs=(), pass_attention_mask=False,
                 name_or_path="", padding_leaks=False, patch_strides=None):
        self.extractor = extractor
        self.shape = str(shape)
        self.frame_convs = [tuple(int(v) for v in c) for c in frame_convs]
        self.pass_attention_mask = bool(pass_attention_mask)
        self.name_or_path = str(name_or_path)
        self.padding_leaks = bool(padding_leaks)
        self.patch_strides = (None if patch_strides is None
                              else tuple(int(v) for v in patch_strides))

    @property
    def sampling_rate(self):
        """The rate (Hz) every clip is resampled to."""
        return int(self.extractor.sampling_rate)

    @property
    def pads_exactly(self):
        """Whether padding leaves a clip's valid frames unchanged (see the module docstring)."""
        return self.shape != "waveform" or (self.pass_attention_mask
                                            and not self.padding_leaks)

    def window(self):
        """The longest input the model takes, in seconds (None: any length)."""
        fe = self.extractor
        if self.shape == "whisper":
            return fe.n_samples / fe.sampling_rate
        if self.shape == "spectrogram":
            # Kaldi filter banks: a 25 ms window moved 10 ms per frame.
            return (fe.max_length - 1) * 0.010 + 0.025
        return None

    def default_max_duration(self):
        """Seconds kept of each clip under ``max_duration="auto"``: the model's window
        (Whisper 30 s, AST about 10 s), else :data:`DEFAULT_MAX_DURATION`."""
        return self.window() or DEFAULT_MAX_DURATION

    def __call__(self, clips):
        fe = self.extractor
        clips = [c.numpy() if isinstance(c, torch.Tensor) else c for c in clips]
        if self.shape == "spectrogram":
            features = fe(clips, sampling_rate=self.sampling_rate,
                          return_tensors="pt")["input_values"]
            if self.patch_strides is None:
                return {"input_values": features}
            return {"input_values": features,
                    "frame_mask": self._patch_mask([len(c) for c in clips], features.shape)}
        if self.shape == "whisper":
            batch = fe(clips, sampling_rate=self.sampling_rate, return_attention_mask=True,
                       return_tensors="pt")
            features = batch["input_features"]
            # One mel frame per hop, as far as the clip reaches.
            valid = torch.tensor([-(-len(c) // fe.hop_length) for c in clips])
            total = features.shape[-1]
        else:
            batch = fe(clips, sampling_rate=self.sampling_rate, padding=True,
                       return_attention_mask=True, return_tensors="pt")
            features = batch["input_values"]
            valid = batch["attention_mask"].sum(1)
            total = features.shape[-1]
        frames = conv_lengths(valid.clamp(max=total), self.frame_convs)
        n_frames = int(conv_lengths(torch.tensor([total]), self.frame_convs)[0])
        out = {("input_features" if self.shape == "whisper" else "input_values"): features,
               "frame_mask": (torch.arange(n_frames) < frames[:, None]).long()}
        if self.pass_attention_mask:
            out["attention_mask"] = batch["attention_mask"]
        return out

    def _patch_mask(self, lengths, shape):
        """AST's tokens that hold sound, ``(B, 2 + patches)``: see the module docstring."""
        size, frequency_stride, time_stride = self.patch_strides
        _, window_frames, mel_bins = shape
        # Kaldi filter banks (the extractor's): 25 ms frames every 10 ms, none
        # past the clip's end (snip_edges), cut to the window.
        rate = self.sampling_rate
        frames = conv_lengths(torch.tensor(lengths), [(rate * 25 // 1000, rate // 100, 0)])
        frames = frames.clamp(min=0, max=window_frames)
        # The patch grid of ASTPatchEmbeddings: frequency-major, time inner.
        n_freq, n_time = (int(conv_lengths(torch.tensor([n]), [(size, stride, 0)])[0])
                          for n, stride in ((mel_bins, frequency_stride),
                                            (window_frames, time_stride)))
        starts = torch.arange(n_time) * time_stride
        sound = (starts < frames[:, None]).repeat(1, n_freq)
        summary = torch.ones(len(lengths), 2, dtype=torch.bool)  # CLS and distillation
        return torch.cat([summary, sound], dim=1).long()

    def config(self):
        """What determines the output (used in cache keys)."""
        return (self.shape, self.extractor.to_json_string(), self.frame_convs,
                self.pass_attention_mask, self.name_or_path, self.padding_leaks,
                self.patch_strides)

    # Pickles and saved files carry the extractor as the JSON it saves,
    # never as a pickled object, and rebuild it offline.

    def state(self):
        """``{"kind": "audio_features", "files": {...}, ...}``: the extractor's files and
        the constants above."""
        with temporary_folder() as folder:
            self.extractor.save_pretrained(folder)
            files = read_folder(folder)
        return {"kind": "audio_features", "files": files, "shape": self.shape,
                "frame_convs": [list(c) for c in self.frame_convs],
                "pass_attention_mask": self.pass_attention_mask,
                "name_or_path": self.name_or_path, "padding_leaks": self.padding_leaks,
                "patch_strides": (None if self.patch_strides is None
                                  else list(self.patch_strides))}

    @classmethod
    def from_state(cls, state):
        """The preprocess :meth:`state` described, offline."""
        transformers = import_transformers()
        with temporary_folder() as folder, quiet_loading(transformers):
            write_folder(state["files"], folder)
            extractor = transformers.AutoFeatureExtractor.from_pretrained(
                folder, trust_remote_code=False)
        return cls(extractor, state["shape"], state["frame_convs"],
                   state["pass_attention_mask"], state["name_or_path"],
                   state.get("padding_leaks", False), state.get("patch_strides"))

    def __getstate__(self):
        return self.state()

    def __setstate__(self, state):
        self.__dict__.update(type(self).from_state(state).__dict__)

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        clone.extractor = copy.deepcopy(self.extractor, memo)
        return clone


def _is_whisper(config):
    return config.model_type == "whisper"


def _shape(config):
    if _is_whisper(config):
        return "whisper"
    if config.model_type == "audio-spectrogram-transformer":
        return "spectrogram"
    if hasattr(config, "conv_kernel") and hasattr(config, "conv_stride"):
        return "waveform"
    raise ValueError(f"sktransfer embeds the waveform models (wav2vec2, HuBERT, WavLM, "
                     f"data2vec-audio), Whisper's encoder and AST; {config.model_type} is "
                     "none of them")


def _frame_convs(config):
    """The convolutions from the model's input to its frames (kernel, stride, padding)."""
    if _is_whisper(config):
        return _WHISPER_CONVS
    if config.model_type == "audio-spectrogram-transformer":
        return ()
    convs = [(k, s, 0) for k, s in zip(config.conv_kernel, config.conv_stride)]
    if getattr(config, "add_adapter", False):  # the adapter's strided convolutions
        convs += [(config.adapter_kernel_size, config.adapter_stride, 1)] * (
            config.num_adapter_layers)
    return convs


def _patch_strides(config):
    """AST's patch size and strides (None for the other models)."""
    if config.model_type != "audio-spectrogram-transformer":
        return None
    return (config.patch_size, config.frequency_stride, config.time_stride)


def _bare_model(transformers, config):
    if _is_whisper(config):
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(config)
    return transformers.AutoModel.from_config(config, trust_remote_code=False)


def _unwrap_keys(config):
    """Accept a state dict saved from the :class:`AudioEncoder` (keys ``model.*``)."""
    prefix = "encoder." if _is_whisper(config) else ""

    def unwrap(state):
        if state and all(k.startswith("model.") for k in state):
            return {prefix + k.removeprefix("model."): v for k, v in state.items()}
        return state
    return unwrap


def network_state(backbone):
    """What rebuilds an :class:`AudioEncoder` offline: its pooling and model config."""
    encoder = backbone.module
    return {"pooling": list(encoder.pooling), "model_config": config_to_dict(encoder.model.config)}


def network_from_state(name, network):
    """A randomly initialized :class:`AudioEncoder` from :func:`network_state` output."""
    transformers = import_transformers()
    config = config_from_dict(transformers, network["model_config"])
    with quiet_loading(transformers), skipped_init():
        model = _bare_model(transformers, config)
    model.eval()
    pooling = network["pooling"]
    return AudioEncoder(model, "auto" if pooling == ["auto"] else pooling)


def _feature_extractor(transformers, name):
    try:
        return transformers.AutoFeatureExtractor.from_pretrained(name, trust_remote_code=False)
    except OSError as exc:
        if os.path.isdir(name):
            raise ValueError(f"{name} holds no feature extractor config "
                             f"(preprocessor_config.json), which says the model's sampling "
                             f"rate and features; save the model's feature extractor there "
                             f"with save_pretrained ({exc})") from exc
        raise weights_unavailable(f"hf:{name}", hub_cache_location(name), exc) from exc


def _groups(encoder):
    """Parameter groups, input first, the feature encoder leading (see ``freeze="auto"``)."""
    groups = ordered_param_groups(encoder)
    first = set(encoder.frozen_by_default())
    return [g for g in groups if g[0] in first] + [g for g in groups if g[0] not in first]


def load(transformers, name, config, weights, *, pooling="auto", spec=None):
    """An audio :class:`~sktransfer.backbones.base.Backbone` for a Hugging Face model.

    Parameters
    ----------
    transformers : module
    name : str
        Hub id or local directory.
    config : transformers.PretrainedConfig
    weights : "DEFAULT", None or path
    pooling : str, default="auto"
    spec : str, optional
    """
    shape = _shape(config)
    extractor = _feature_extractor(transformers, name)
    model_class = transformers.WhisperModel if _is_whisper(config) else None
    model, weights_id = load_model(transformers, name, config, weights,
                                   model_class=model_class, unwrap=_unwrap_keys(config))
    if _is_whisper(config):
        model = model.get_encoder()  # the decoder writes text; the encoder embeds sound
    encoder = AudioEncoder(model, pooling)
    prep = AudioFeatures(extractor, shape, _frame_convs(config),
                         pass_attention_mask=shape == "waveform"
                         and bool(getattr(extractor, "return_attention_mask", False)),
                         name_or_path=name,
                         padding_leaks=config.model_type == "data2vec-audio",
                         patch_strides=_patch_strides(config))
    return Backbone(encoder, prep, "audio", spec or f"hf:{name}", weights_id,
                    out_dim=encoder.out_dim(), param_groups=_groups(encoder))


register_preprocess("audio_features", AudioFeatures.from_state)
