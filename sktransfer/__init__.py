"""sktransfer: transfer learning for scikit-learn.

Pretrained PyTorch backbones (torchvision, timm, Hugging Face, or your own
``nn.Module``) behind ``fit`` / ``transform`` / ``predict``.
"""

from ._version import __version__
from .backbones import load_backbone, self_contained
from .features import PretrainedFeatureTransformer
from .finetune import FineTunedClassifier, FineTunedRegressor
from .saving import load, save
from .selection import rank_backbones
from .study import TransferReport, compare_transfer

__all__ = ["FineTunedClassifier", "FineTunedRegressor", "PretrainedFeatureTransformer",
           "TransferReport", "compare_transfer", "load", "load_backbone", "rank_backbones", "save",
           "self_contained", "export_onnx",
           "__version__"]


def __getattr__(name):
    # export_onnx imports skl2onnx and onnx: only when it is asked for, so that
    # importing sktransfer stays as light as it was.
    if name == "export_onnx":
        from .export import export_onnx
        return export_onnx
    raise AttributeError(f"module 'sktransfer' has no attribute {name!r}")
