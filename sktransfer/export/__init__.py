"""Serving without PyTorch: a fitted model exported as one ONNX graph.

:func:`export_onnx` writes a fitted sktransfer estimator, or a scikit-learn
pipeline holding one, as one ``.onnx`` file: raw samples in (uint8 images,
strings, waveforms, float rows), the backbone's preprocessing and network, the
scikit-learn steps after it, labels and probabilities out, checked against
the model before it is written. :func:`register_converters` teaches
skl2onnx the estimators, so that ``skl2onnx.to_onnx`` converts such a
pipeline too.

This room sits above the estimators: it imports them, the engine's exporter
and the backbones' preprocessing graphs; nothing below imports it.
"""

from .convert import register_converters
from .network import ExportError
from .serving import inference_session
from .writer import ExportCheck, export_onnx

__all__ = ["ExportCheck", "ExportError", "export_onnx", "inference_session",
           "register_converters"]
