"""Moved to :mod:`sktransfer.inputs.audio`; this old path warns and is removed in 0.3.0.

A code alias (see :data:`sktransfer._utils.aliases.MOVED`): nothing saved
names this module, so no file depends on it.
"""

from ._utils.aliases import warn_moved

warn_moved(__name__)

from .inputs.audio import (  # noqa: E402  (after the warning, on purpose)
    AUDIO_SUFFIXES, MAX_CHANNELS, RESAMPLING, AudioSamples, audio_samples, mono_float, resample,
    samples_first)

__all__ = ["AUDIO_SUFFIXES", "AudioSamples", "MAX_CHANNELS", "RESAMPLING", "audio_samples",
           "mono_float", "resample", "samples_first"]
