"""sktransfer: transfer learning for scikit-learn.

Pretrained PyTorch backbones (torchvision, timm, Hugging Face, or your own
``nn.Module``) behind ``fit`` / ``transform`` / ``predict``.
"""

from .backbones import load_backbone
from .features import PretrainedFeatureTransformer
from .finetune import FineTunedClassifier, FineTunedRegressor
from .selection import rank_backbones
from .serialization import load, save
from .study import TransferReport, compare_transfer

__version__ = "0.1.0"

__all__ = ["FineTunedClassifier", "FineTunedRegressor", "PretrainedFeatureTransformer",
           "TransferReport", "compare_transfer", "load", "load_backbone", "rank_backbones", "save",
           "__version__"]
