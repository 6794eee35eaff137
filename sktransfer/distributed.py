"""Data-parallel training: what a script run under torchrun, accelerate or srun may ask.

A fine-tuner's ``fit`` trains across the processes of a launch by itself
(``distributed="auto"``); a script needs only to know which process should
print and save, and where it stands in the launch. See the user guide,
"Multi-GPU and multi-node fine-tuning".
"""

from ._utils.launch import Launch, is_main_process, launch_environment

__all__ = ["Launch", "is_main_process", "launch_environment"]
