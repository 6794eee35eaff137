"""sktransfer: transfer learning for scikit-learn.

Pretrained PyTorch backbones (torchvision, timm, Hugging Face, or your own
``nn.Module``) behind ``fit`` / ``transform`` / ``predict``.
"""

from .backbones import load_backbone
from .features import PretrainedFeatureTransformer
from .finetune import FineTunedClassifier, FineTunedRegressor

__version__ = "0.1.0"

__all__ = ["FineTunedClassifier", "FineTunedRegressor", "PretrainedFeatureTransformer",
           "load_backbone", "__version__"]
