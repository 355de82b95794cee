"""Batch-norm re-estimation after one-shot pruning.

Why: pruning changes every layer's output distribution, but a batch norm keeps the running
mean and variance of the unpruned model, so a network with many of them (MobileNetV2 has
52) collapses after one-shot pruning even when each layer's own output error is small.
Re-estimating the statistics on a few hundred training images (forward passes in train
mode, no gradient, no weight change) is the standard remedy of post-training pruning
(AdaPrune's "BN tuning", Hubara et al. 2021; OBC, Frantar & Alistarh 2022). It changes no
weight, so masks and sparsity are untouched; a fine-tuning, when one follows, re-estimates
them anyway.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> int:
    """Re-estimate every batch norm's running statistics on ``images`` (in place).

    The statistics become the plain average over the batches (``momentum=None``); the
    model is left in eval mode and its weights are unchanged.

    Args:
        model: the pruned model.
        images: normalised training images ``[N, C, H, W]`` (calibration data).
        batch_size: images per forward pass.

    Returns:
        The number of batch norms re-estimated (0: nothing to do).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        >>> recalibrate_batchnorm_(m, torch.randn(32, 1, 8, 8) * 3 + 1)
        1
        >>> bool(abs(float(m[1].running_mean.mean())) > 0), m.training
        (True, False)
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms or len(images) == 0:
        return 0
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    try:
        device = next(model.parameters()).device
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size].to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return len(norms)
