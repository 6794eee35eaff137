"""sktransfer: transfer learning for scikit-learn.

Pretrained PyTorch backbones (torchvision, timm, Hugging Face, or your own
``nn.Module``) behind ``fit`` / ``transform`` / ``predict``.
"""

from .backbones import load_backbone
from .distributed import mark_launched_process
from .features import PretrainedFeatureTransformer
from .finetune import FineTunedClassifier, FineTunedRegressor
from .selection import rank_backbones
from .serialization import load, save
from .study import TransferReport, compare_transfer

__version__ = "0.1.0"

# In a process started by torchrun (or accelerate, or srun), note that this
# process is a rank of the launch: a worker process it starts inherits the
# launch's environment, and must know it is not one of its ranks.
mark_launched_process()

__all__ = ["FineTunedClassifier", "FineTunedRegressor", "PretrainedFeatureTransformer",
           "TransferReport", "compare_transfer", "load", "load_backbone", "rank_backbones", "save",
           "__version__"]
