"""The gradual schedule (Zhu & Gupta, 2017): sparsity rises during one fine-tuning.

Sparsity follows ``s_j = s_f (1 - (1 - j/n)^3)`` in ``n = steps`` pruning steps over the
first 75 % of the training steps; magnitude masks are recomputed at each step (zeros are
the smallest weights, so masks only grow) and re-applied after every optimizer step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from edgeopt.prune._base import Pruned
from edgeopt.prune.config import PruneConfig
from edgeopt.prune.masks import MaskCallback, apply_masks_
from edgeopt.prune.schedule import _device_of, _train_config, val_accuracy, weight_sparsity

#: fraction of the gradual schedule's training steps over which sparsity rises
GRADUAL_END = 0.75


class GradualCallback:
    """Trainer callback of the gradual schedule: at each ``(train_step, fraction)`` of
    ``plan`` prune to ``fraction`` of ``ratios`` (magnitude masks); re-apply the masks after
    every step. ``measure(model)`` (val accuracy) runs before each later pruning step, so
    each history entry holds the accuracy reached at its sparsity."""

    def __init__(self, plan: Sequence[tuple[int, float]], ratios: Mapping[str, float], scope: str,
                 final_ratio: float, measure: Callable[[nn.Module], float | None]) -> None:
        self.plan, self.ratios, self.scope = list(plan), dict(ratios), scope
        self.final_ratio, self.measure = final_ratio, measure
        self.history: list[dict[str, Any]] = []
        self.masks, self.next = MaskCallback({}), 0

    def prune_due(self, model: nn.Module, done_steps: float) -> None:
        """Run every planned pruning step due after ``done_steps`` optimizer steps."""
        from edgeopt.prune.masks import sparsity
        from edgeopt.prune.unstructured import magnitude_masks

        while self.next < len(self.plan) and self.plan[self.next][0] <= done_steps:
            if self.history:
                self.history[-1]["val_acc"] = self.measure(model)
            t, f = self.plan[self.next]
            masks = magnitude_masks(model, {n: r * f for n, r in self.ratios.items()}, self.scope)
            apply_masks_(model, masks)
            self.masks.masks = masks
            self.next += 1
            self.history.append({"step": self.next, "train_step": t, "ratio": round(self.final_ratio * f, 6),
                                 "sparsity": sparsity(masks), "val_acc": None})

    def on_step_end(self, trainer: Any, step: int) -> None:
        self.prune_due(trainer.model, trainer.global_step)
        self.masks.on_step_end(trainer, step)


def gradual_plan(steps: int, total_steps: int, end: float = GRADUAL_END) -> list[tuple[int, float]]:
    """``[(train_step, fraction of the final ratio)]`` of the Zhu & Gupta schedule.

    Step ``j`` of ``n`` fires after ``round((j - 1) * end * total / n)`` optimizer steps
    and prunes to ``1 - (1 - j/n)^3`` of the final ratio (the last step to all of it).

    Example:
        >>> gradual_plan(4, 100)
        [(0, 0.578125), (19, 0.875), (38, 0.984375), (56, 1.0)]
    """
    return [(round((j - 1) * end * total_steps / steps), 1.0 - (1.0 - j / steps) ** 3)
            for j in range(1, steps + 1)]


def gradual(base: nn.Module, config: PruneConfig, layers: list[str], ratios: dict[str, float],
            data: Any, progress: bool, loss_fn: Any = None) -> tuple[Pruned, list[dict[str, Any]]]:
    from edgeopt.train import Trainer

    t0 = time.perf_counter()
    model, home = copy.deepcopy(base), _device_of(base)
    base_acc = val_accuracy(model, data)
    per_epoch = len(data.loader("train", config.finetune_batch_size))
    if config.finetune_max_steps_per_epoch:
        per_epoch = min(per_epoch, config.finetune_max_steps_per_epoch)
    plan = gradual_plan(config.steps, config.finetune_epochs * per_epoch)
    cb = GradualCallback(plan, ratios, config.scope, config.ratio, lambda m: val_accuracy(m, data))
    cb.prune_due(model, 0)  # the steps planned before training
    tcfg = _train_config(config, config.finetune_epochs, config.seed, progress)
    train_data = loss_fn.data(data) if hasattr(loss_fn, "data") else data  # KD: teacher logits cache
    result = Trainer(tcfg, loss_fn=loss_fn, callbacks=[cb]).fit(model, train_data)
    warnings: list[str] = []  # every planned step fired: the last is due at 75 % of training
    model.to(home).eval()
    masks = {n: m.cpu() for n, m in cb.masks.masks.items()}
    apply_masks_(model, masks)
    history = [{"step": 0, "train_step": 0, "ratio": 0.0, "sparsity": weight_sparsity(base, layers),
                "val_acc": base_acc}] + cb.history
    if hasattr(loss_fn, "teacher"):  # every pruning step fine-tuned with the teacher
        for h in history[1:]:
            h["kd"] = True
    history[-1]["val_acc"] = result.metrics.get("val_acc") if base_acc is not None else None
    history[-1]["sparsity"] = weight_sparsity(model, layers)  # re-read from the weights
    for h in history:
        known = h["val_acc"] is not None and base_acc is not None
        h["drop"] = round(100.0 * (base_acc - h["val_acc"]), 4) if known else None
    last = history[-1]
    if config.max_drop is not None and last["drop"] is not None and last["drop"] > config.max_drop:
        warnings.append(f"gradual pruning lost {last['drop']:.2f} points > max_drop {config.max_drop} "
                        f"(max_drop stops only the iterative schedule)")
    if config.method == "obs":
        warnings.append("the gradual schedule ranks by magnitude; OBS updates need schedule "
                        "'oneshot' or 'iterative'")
    info = {"kind": "gradual", "steps": config.steps, "train_steps": config.finetune_epochs * per_epoch,
            "plan": plan, "base_val_acc": base_acc, "seconds": round(time.perf_counter() - t0, 3)}
    return Pruned(model=model, masks=masks, info={"schedule": info}, warnings=warnings), history
