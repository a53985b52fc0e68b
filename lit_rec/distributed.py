"""Collectives that the training steps of the statistics methods need under DDP."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


def all_gather_rows(module: L.LightningModule, tensor: Tensor) -> Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order; `tensor` itself with one process.

    Ranks may hold different numbers of rows (the last global batch of an epoch is split 14/13, say);
    `LightningModule.all_gather` needs equal shapes (gloo aborts on a size mismatch), so the sizes are
    gathered first and each shard is padded to the longest and trimmed again.
    """
    if module.trainer.world_size <= 1:
        return tensor
    sizes = module.all_gather(torch.tensor([tensor.shape[0]], device=tensor.device)).reshape(-1).tolist()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = module.all_gather(padded)  # (world, longest, ...)
    return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])
