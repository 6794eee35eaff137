"""sktransfer: transfer learning for scikit-learn.

Pretrained PyTorch backbones (torchvision, timm, Hugging Face, or your own
``nn.Module``) behind ``fit`` / ``transform`` / ``predict``.
"""

from .backbones import load_backbone
from .features import PretrainedFeatureTransformer
from .finetune import FineTunedClassifier, FineTunedRegressor
from .serialization import load, save

__version__ = "0.1.0"

__all__ = ["FineTunedClassifier", "FineTunedRegressor", "PretrainedFeatureTransformer",
           "load", "load_backbone", "save", "__version__"]
