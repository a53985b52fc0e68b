"""Test-wide environment: W&B disabled and silent, no API key, no LIT_REC_DEBUG."""

import os

os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("LIT_REC_DEBUG", None)

import torch.multiprocessing

# ddp_spawn children otherwise fail to unpickle shared tensors ("unable to resize file")
torch.multiprocessing.set_sharing_strategy("file_system")
