"""Finding the W&B logger of a trainer, if any: `lit_rec.wandb_utils.find_wandb_logger`, for the callbacks."""

from lit_rec.wandb_utils import find_wandb_logger

__all__ = ["find_wandb_logger"]
