"""Unstructured pruning masks: apply them, read them back from zeros, keep them in training.

A mask is a bool tensor shaped like a layer's weight, True where the weight is kept. The
masks of a model are ``{layer name: mask}``. Pruning zeroes the weights; fine-tuning would
regrow them, so :class:`MaskCallback` re-applies the masks after every optimizer step
(the Trainer calls ``on_step_end``): the sparsity after training is exactly the sparsity
before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the weights where ``masks`` is False (in place); returns ``model``.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> _ = apply_masks_(m, {"0": torch.tensor([[True, False], [False, True]])})
        >>> int((m[0].weight == 0).sum())
        2
    """
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        # masked_fill, not a multiply: a multiply turns negative weights into -0.0, which
        # the sparse format must then store a sign bit for
        w.masked_fill_(~mask.to(device=w.device, dtype=torch.bool), 0.0)
    return model


def masks_from_zeros(model: nn.Module, layers: Iterable[str]) -> dict[str, torch.Tensor]:
    """``{layer: weight != 0}``: the masks a pruned model's zeros imply.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> with torch.no_grad(): _ = m[0].weight.zero_()
        >>> masks_from_zeros(m, ["0"])["0"].any().item()
        False
    """
    return {n: model.get_submodule(n).weight.detach() != 0 for n in layers}


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of weights the masks remove (0 when there are none)."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


class MaskCallback:
    """Trainer callback: re-apply ``masks`` after every optimizer step, and zero the
    momentum buffers of pruned weights so they do not push them back between steps.

    Example:
        >>> from edgeopt.train import Trainer, TrainConfig
        >>> cb = MaskCallback({})
        >>> Trainer(TrainConfig(epochs=1, progress=False), callbacks=[cb]).callbacks[0] is cb
        True
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> None:
        self.masks = dict(masks)
        self.model = model

    def on_step_end(self, trainer, step: int) -> None:
        model = self.model if self.model is not None else trainer.model
        apply_masks_(model, self.masks)
        opt = getattr(trainer, "optimizer", None)
        if opt is None:
            return
        with torch.no_grad():
            for name, mask in self.masks.items():
                state = opt.state.get(model.get_submodule(name).weight)
                buf = state.get("momentum_buffer") if state else None
                if buf is not None:
                    buf.masked_fill_(~mask.to(device=buf.device, dtype=torch.bool), 0.0)
