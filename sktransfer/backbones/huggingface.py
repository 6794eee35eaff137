"""The ``"hf:"`` sources: any Hugging Face model, as its authors configured it.

``"hf:<model id or local directory>"`` reads the model's config and hands it
to the family that knows it: text encoders (and sentence-transformers
pipelines) to :mod:`.hf_text`, image encoders and the two towers of
image-text models (CLIP, SigLIP) to :mod:`.hf_vision`, speech and audio
encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper's encoder, AST)
to :mod:`.hf_audio`. An image-text model
gives its image tower by default; ``"hf-text:<id>"`` and ``"hf-image:<id>"``
choose the tower (or the modality) explicitly.

Saved backbones record which family built them (``network["family"]``;
files written before there were families hold text encoders).
"""

from .hf_audio import load as load_audio
from .hf_audio import network_from_state as audio_from_state
from .hf_audio import network_state as audio_state
from .hf_loading import import_transformers, load_config, quiet_loading
# TextEncoder and Tokenize are re-exported: they lived here before the
# families had modules of their own.
from .hf_text import TextEncoder, Tokenize  # noqa: F401
from .hf_text import load as load_text
from .hf_text import network_from_state as text_from_state
from .hf_text import network_state as text_state
from .hf_vision import load as load_vision
from .hf_vision import network_from_state as vision_from_state
from .hf_vision import network_state as vision_state
from .registry import register_source

#: family -> (network_state, network_from_state)
_FAMILIES = {"text": (text_state, text_from_state),
             "vision": (vision_state, vision_from_state),
             "audio": (audio_state, audio_from_state)}

#: Model types whose inputs are sound (:mod:`.hf_audio`).
_AUDIO_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper",
                "audio-spectrogram-transformer", "sew", "sew-d", "unispeech", "unispeech-sat")


def modality_of(config):
    """``"text"``, ``"image"``, ``"image-text"`` or ``"audio"``: what a config's model takes.

    Examples
    --------
    >>> from transformers import BertConfig, ViTConfig, CLIPConfig
    >>> [modality_of(c()) for c in (BertConfig, ViTConfig, CLIPConfig)]
    ['text', 'image', 'image-text']
    """
    if hasattr(config, "vision_config") and hasattr(config, "text_config"):
        return "image-text"
    if config.model_type in _AUDIO_TYPES or hasattr(config, "num_mel_bins"):
        return "audio"
    if hasattr(config, "num_channels") and not hasattr(config, "vocab_size"):
        return "image"
    return "text"


def _loader(forced):
    def load(name, weights="DEFAULT", *, pooling="auto", image_size=None, **_):
        transformers = import_transformers()
        with quiet_loading(transformers):
            config = load_config(transformers, name)
            modality = modality_of(config)
            spec = f"{'hf' if forced is None else 'hf-' + forced}:{name}"
            if modality == "audio" and forced is None:
                return load_audio(transformers, name, config, weights, pooling=pooling,
                                  spec=spec)
            if forced is not None and modality not in (forced, "image-text"):
                raise ValueError(f"{spec} asks for a {forced} encoder, but {name} is a "
                                 f"{modality} model ({config.model_type}); use 'hf:{name}'.")
            if modality == "text":
                return load_text(transformers, name, config, weights, pooling=pooling,
                                 spec=spec)
            return load_vision(transformers, name, config, weights, pooling=pooling,
                               image_size=image_size, tower=forced or "image", spec=spec)
    return load


def network_state(backbone):
    """What rebuilds an ``"hf:"`` network offline: its family's description of it."""
    family = getattr(backbone.module, "hf_family", "text")
    return {"family": family, **_FAMILIES[family][0](backbone)}


def network_from_state(name, network):
    """The network :func:`network_state` described, with random weights, offline."""
    return _FAMILIES[network.get("family", "text")][1](name, network)


register_source("hf", _loader(None), network_state, network_from_state)
register_source("hf-text", _loader("text"), network_state, network_from_state)
register_source("hf-image", _loader("image"), network_state, network_from_state)
