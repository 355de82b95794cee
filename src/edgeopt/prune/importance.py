"""Importance scores of structured pruning: how the channels of a group are ranked.

Each registered score builds a torch-pruning ``Importance`` (a one-method strategy,
``__call__(group) -> Tensor`` with one score per channel of the group; DESIGN habit 5).
Scores that need gradients get them here, on calibration batches of the training split:

* ``taylor`` (Molchanov et al. 2019): ``|w * dL/dw|`` with the gradient of the mean
  cross-entropy over ``config.calibration_samples`` training images.
* ``obd`` (Optimal Brain Damage, LeCun et al. 1989): ``w^2 * H_diag`` with the Hessian
  diagonal estimated by the empirical Fisher, the mean of per-image squared gradients.
  torch-pruning 1.6's ``GroupHessianImportance.accumulate_grad`` keys its sums by parameter
  but checks them by name, so it keeps only the last image; the mean is accumulated here and
  handed over in ``param.grad``, which the score reads when its own buffer is empty.

The gradients are left in ``param.grad`` of the model (the pruner prunes them together with
the weights); :func:`copy_with_grads` copies a model with them for trial prunings.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.registry import Registry


@dataclasses.dataclass(frozen=True)
class ImportanceKind:
    """A registered importance score.

    Attributes:
        make: builds the torch-pruning importance object (imported on first use).
        gradients: None (weights only), ``"mean"`` (gradient of the mean loss, Taylor) or
            ``"fisher"`` (mean of per-image squared gradients, OBD).
    """

    make: Callable[[], Any]
    gradients: str | None = None


def _tp():
    import torch_pruning  # a dependency of edgeopt, imported on first use (habit 6)

    return torch_pruning


#: importance name -> :class:`ImportanceKind`
IMPORTANCES: Registry = Registry("importance score")
IMPORTANCES.add("l1", ImportanceKind(lambda: _tp().importance.GroupMagnitudeImportance(p=1)),
                help="sum of |w| over the group's weights (filter L1 norm)")
IMPORTANCES.add("l2", ImportanceKind(lambda: _tp().importance.GroupMagnitudeImportance(p=2)),
                help="sum of w^2 over the group's weights")
IMPORTANCES.add("bn_scale", ImportanceKind(lambda: _tp().importance.BNScaleImportance()),
                help="|gamma| of the batch norms (network slimming); groups without BN are kept")
IMPORTANCES.add("taylor", ImportanceKind(lambda: _tp().importance.GroupTaylorImportance(), "mean"),
                help="first-order Taylor |w * dL/dw| on calibration batches (needs data)")
IMPORTANCES.add("obd", ImportanceKind(lambda: _tp().importance.GroupHessianImportance(), "fisher"),
                help="Optimal Brain Damage w^2 * Hessian diagonal (empirical Fisher; needs data)")
IMPORTANCES.add("lamp", ImportanceKind(lambda: _tp().importance.LAMPImportance(p=2)),
                help="layer-adaptive magnitude (LAMP) scores, comparable across layers")
IMPORTANCES.add("fpgm", ImportanceKind(lambda: _tp().importance.FPGMImportance(p=2)),
                help="filters nearest the geometric median are redundant (FPGM)")


def build_importance(name: str, model: nn.Module, data: Any = None, config: Any = None) -> Any:
    """The importance object ``name``; gradient-based scores get their gradients now.

    Args:
        name: a name of :data:`IMPORTANCES`.
        model: the model about to be pruned; ``taylor``/``obd`` leave their gradients in
            its ``param.grad`` (the model's train/eval mode is restored afterwards).
        data: a DataModule; ``taylor``/``obd`` draw ``config.calibration_samples`` labelled
            training images from it (``data.samples(n, "train")``).
        config: the PruneConfig (``calibration_samples``, ``seed``); None: 256 images.

    Returns:
        A torch-pruning importance: ``imp(group) -> Tensor`` of one score per channel.

    Raises:
        ConfigError: an unknown name, or ``taylor``/``obd`` without data.

    Example:
        >>> import torch
        >>> imp = build_importance("l1", torch.nn.Linear(4, 2))
        >>> type(imp).__name__
        'GroupMagnitudeImportance'
    """
    kind = IMPORTANCES.get(name)
    if kind.gradients is not None:
        if data is None or not hasattr(data, "samples"):
            raise ConfigError(f"importance '{name}' needs labelled training images: pass a "
                              f"DataModule as data (prune(model, config, data))")
        n = int(getattr(config, "calibration_samples", 256))
        x, y = data.samples(n, "train", seed=int(getattr(config, "seed", 0)))
        accumulate_gradients_(model, x, y, squared=kind.gradients == "fisher")
    return kind.make()


def accumulate_gradients_(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          squared: bool = False, batch_size: int = 64) -> None:
    """Leave the mean loss gradient (or the mean squared per-image gradient) in ``param.grad``.

    The model runs in eval mode (batch norm uses its running statistics, dropout is off), so
    the gradients do not depend on the batch size. Parameters that do not require gradients
    get them for the duration; a parameter the loss does not reach gets a zero gradient.

    Args:
        model: the model (changed: its ``.grad``; mode and ``requires_grad`` restored).
        x: normalised images ``[N, C, H, W]``; y: labels ``[N]``.
        squared: False: ``grad = dL/dw`` of the mean cross-entropy over the N images
            (Taylor); True: ``grad = mean_i (dL_i/dw)^2`` (empirical Fisher, OBD), one
            backward pass per image.
        batch_size: images per backward pass when ``squared`` is False.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad(): _ = lin.weight.copy_(torch.eye(2))
        >>> accumulate_gradients_(lin, torch.tensor([[1., 0.]]), torch.tensor([0]))
        >>> [round(v, 3) for v in lin.weight.grad[0].tolist()]
        [-0.269, 0.0]
    """
    params = list(model.parameters())
    if not params:
        return
    device = params[0].device
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    total = [torch.zeros_like(p) for p in params]
    n = int(x.shape[0])
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            step = 1 if squared else max(1, int(batch_size))
            for i in range(0, n, step):
                xb, yb = x[i:i + step].to(device), y[i:i + step].to(device)
                model.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(xb), yb, reduction="sum")
                (loss if squared else loss / n).backward()
                for t, p in zip(total, params):
                    if p.grad is not None:
                        t.add_(p.grad.detach().pow(2) if squared else p.grad.detach())
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    for t, p in zip(total, params):
        p.grad = t / n if squared else t


def copy_with_grads(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` with each parameter's ``.grad`` copied too (deepcopy drops it).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1); lin.weight.grad = torch.ones(1, 2)
        >>> copy_with_grads(lin).weight.grad.tolist()
        [[1.0, 1.0]]
    """
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        if p.grad is not None:
            q.grad = p.grad.detach().clone()
    return twin


def list_importances() -> list[str]:
    """Names of the importance scores.

    Example:
        >>> list_importances()
        ['bn_scale', 'fpgm', 'l1', 'l2', 'lamp', 'obd', 'taylor']
    """
    return IMPORTANCES.names()
