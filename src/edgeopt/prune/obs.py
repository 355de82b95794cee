"""Layer-wise Optimal Brain Surgeon pruning, in the manner of OBC / SparseGPT.

Each chosen layer is pruned to its exact sparsity with the weights that stay updated to
keep its output on calibration images: for inputs ``X`` (``[columns, samples]``: a Linear's
input rows, a conv's unfolded patches) the layer-wise Hessian is ``H = 2 X X^T / samples``;
SparseGPT's procedure (Frantar & Alistarh, 2023) then walks the columns in blocks of
``obs_block_size``: per block it removes the weights of least saliency ``w^2 / [H^-1]_qq^2``
(chosen across all rows of the block, "adaptive mask selection", with an exact count so the
layer ends at ``round(ratio * numel)`` zeros) and spreads each removed weight's error over
the later columns through the upper Cholesky factor of ``H^-1``.

Layers are pruned one after the other in model order, each on inputs that flow through the
already pruned earlier layers (the calibration images are run again for each layer; the
forward pass stops at the layer). Grouped and depthwise convs are one problem per group,
solved together so the layer's count is exact. The Hessian math is float64. ``info`` records
per layer the relative output error ``||W X - W' X||^2 / ||W X||^2`` of OBS and of
magnitude pruning at the same sparsity, on the same inputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.prune.bn_recalibration import recalibrate_batchnorm_

from edgeopt.errors import ConfigError, NumericalError, UnsupportedModelError
from edgeopt.prune._base import Pruned
from edgeopt.prune.unstructured import removal_count, smallest_k

#: float elements of unfolded input per chunk (~256 MB in float64), bounding peak memory
_CHUNK_ELEMENTS = 1 << 25
#: dampening is multiplied by 10 up to this many times when H is not positive definite
_DAMP_TRIES = 6


class _Stop(Exception):
    """Raised by the input hook to end the forward pass at the layer being pruned."""


def _run_to(net: nn.Module, module: nn.Module, hook: Callable[[nn.Module, tuple], None], x: torch.Tensor) -> None:
    """Run ``net`` on ``x`` with ``hook`` on ``module``'s inputs; the hook raises
    :class:`_Stop`, so the layers after ``module`` never run."""
    handle = module.register_forward_pre_hook(hook)
    try:
        net(x)
    except _Stop:
        pass
    finally:
        handle.remove()


def layer_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as matrix columns, grouped: ``[groups, cols_per_group, samples]``.

    For a Linear, each row of ``x`` (all leading dims flattened) is a sample and
    ``weight @ X`` is the output before bias. For a Conv1d/Conv2d, the unfolded patches
    (padding mode, stride, dilation and groups honoured) are the samples, in the order of
    ``weight.reshape(out, -1)``'s columns.

    Raises:
        UnsupportedModelError: a layer type other than Linear, Conv1d, Conv2d.

    Example:
        >>> conv = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> X = layer_columns(conv, x)                        # [2 groups, 18, 50]
        >>> W = conv.weight.reshape(2, 2, 18)                 # [groups, out/group, cols]
        >>> y = (W @ X).reshape(4, 2, 25).transpose(0, 1).reshape(2, 4, 5, 5)
        >>> torch.allclose(y, conv(x), atol=1e-5)
        True
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        two_d = isinstance(module, nn.Conv2d)
        pad = module._reversed_padding_repeated_twice  # also right for padding="same"
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pad, mode=mode)
        k, s, d = module.kernel_size, module.stride, module.dilation
        if not two_d:  # a Conv1d is a Conv2d of height 1
            x, k, s, d = x.unsqueeze(2), (1, k[0]), (1, s[0]), (1, d[0])
        cols = F.unfold(x, k, dilation=d, stride=s)  # [N, C*kh*kw, L]
        g = module.groups
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [C*kh*kw, N*L]
        return cols.reshape(g, cols.shape[0] // g, cols.shape[1])
    raise UnsupportedModelError(
        f"OBS pruning handles Linear, Conv1d and Conv2d layers, not {type(module).__name__}; "
        f"exclude the layer (exclude=[NAME]) or use method='unstructured'"
    )


def _f64(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float64, on the CPU when its device has no float64 (Apple MPS)."""
    return (t.cpu() if t.device.type == "mps" else t).to(torch.float64)


def grouped_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``[groups, out/groups, cols]`` (float64), matching :func:`layer_columns`.

    Example:
        >>> grouped_weight(nn.Conv2d(4, 6, 3, groups=2)).shape
        torch.Size([2, 3, 18])
    """
    w = _f64(module.weight.detach())
    g = getattr(module, "groups", 1)
    return w.reshape(g, w.shape[0] // g, -1)


def _accumulate(module: nn.Module, xs: tuple[torch.Tensor, ...], sums: list[torch.Tensor | None],
                pairs: tuple[tuple[int, int], ...]) -> int:
    """Add ``X_a X_b^T`` to ``sums[k]`` for the k-th pair ``(a, b)`` of ``pairs``, where ``X_a``
    are the unfolded columns of ``xs[a]`` (inputs of ``module`` whose samples pair up), over
    chunks of samples so that no unfolded tensor gets large; returns the sample count."""
    xs = tuple(x.detach() for x in xs)
    step = max(1, _CHUNK_ELEMENTS // max(1, layer_columns(module, xs[0][:1]).numel()))
    count = 0
    for i in range(0, xs[0].shape[0], step):
        X = [_f64(layer_columns(module, x[i:i + step])) for x in xs]
        if not all(bool(torch.isfinite(t).all()) for t in X):
            raise NumericalError("OBS: NaN or Inf reached the inputs of a layer being pruned")
        for k, (a, b) in enumerate(pairs):
            part = X[a] @ X[b].transpose(1, 2)
            sums[k] = part if sums[k] is None else sums[k] + part
        count += X[0].shape[2]
    return count


@torch.no_grad()
def layer_hessian(model: nn.Module, name: str, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``H = 2 X X^T / samples`` of layer ``name``'s inputs on ``images``, ``[groups, c, c]`` float64.

    The model is run batch by batch and stopped at the layer (later layers never run).

    Example:
        >>> m = nn.Sequential(nn.Linear(3, 2))
        >>> H = layer_hessian(m, "0", torch.eye(3))
        >>> torch.allclose(H[0], 2 * torch.eye(3, dtype=torch.float64) / 3)
        True
    """
    module = model.get_submodule(name)
    sums: list[torch.Tensor | None] = [None]
    state = {"n": 0}

    def hook(mod: nn.Module, args: tuple) -> None:
        state["n"] += _accumulate(mod, (args[0],), sums, ((0, 0),))
        raise _Stop

    for i in range(0, images.shape[0], batch_size):
        _run_to(model, module, hook, images[i:i + batch_size])
    if sums[0] is None:
        raise ConfigError(f"OBS: layer {name!r} never ran in the model's forward pass; exclude it")
    return 2.0 * sums[0] / max(1, state["n"])


@torch.no_grad()
def paired_statistics(dense: nn.Module, model: nn.Module, name: str, images: torch.Tensor,
                      batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H0, C, H1)`` of layer ``name``: ``2 X0 X0^T``, ``2 X0 X1^T``, ``2 X1 X1^T`` (all
    ``/ samples``, ``[groups, c, c]`` float64), where ``X0`` are the layer's inputs in the
    unpruned ``dense`` model and ``X1`` those in the partly pruned ``model``, on the same
    images (so the samples pair up).

    Example:
        >>> m = nn.Sequential(nn.Linear(3, 2))
        >>> H0, C, H1 = paired_statistics(m, m, "0", torch.eye(3))
        >>> torch.equal(H0, C) and torch.equal(C, H1)
        True
    """
    got: dict[str, torch.Tensor] = {}

    def grab(key: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            got[key] = args[0].detach()
            raise _Stop
        return hook

    mods = (dense.get_submodule(name), model.get_submodule(name))
    sums: list[torch.Tensor | None] = [None, None, None]
    count = 0
    for i in range(0, images.shape[0], batch_size):
        for net, mod, key in ((dense, mods[0], "x0"), (model, mods[1], "x1")):
            _run_to(net, mod, grab(key), images[i:i + batch_size])  # one at a time: dense may be model
        if "x0" not in got or "x1" not in got:
            raise ConfigError(f"OBS: layer {name!r} never ran in the model's forward pass; exclude it")
        # the layer is the same shape in both models, so either unfolds both inputs
        count += _accumulate(mods[1], (got.pop("x0"), got.pop("x1")), sums, ((0, 0), (0, 1), (1, 1)))
    H0, C, H1 = (2.0 * t / max(1, count) for t in sums)  # type: ignore[operator]
    return H0, C, H1


def dense_target(W0: torch.Tensor, C: torch.Tensor, H1: torch.Tensor, damp: float) -> torch.Tensor:
    """The weights that best reproduce the unpruned model's layer output on the pruned
    model's inputs: ``argmin_W ||W0 X0 - W X1||^2 + lam ||W - W0||^2`` =
    ``W0 + W0 (C - H1) (H1 + lam I)^-1``, with ``lam = damp * mean(diag(H1))`` (a ridge
    towards ``W0``, so equal inputs give back ``W0`` exactly).

    Example:
        >>> H = torch.eye(2, dtype=torch.float64).unsqueeze(0)
        >>> W0 = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
        >>> torch.equal(dense_target(W0, H, H, 0.1), W0)
        True
    """
    diag = torch.diagonal(H1, dim1=-2, dim2=-1)
    lam = float(damp) * diag.mean(dim=-1, keepdim=True).clamp_min(1e-12)
    eye = torch.eye(H1.shape[-1], dtype=H1.dtype, device=H1.device)
    A = H1 + lam.unsqueeze(-1) * eye  # symmetric positive definite
    # W0 (C - H1) A^-1  ==  (A^-1 (C - H1)^T W0^T)^T
    delta = torch.linalg.solve(A, (C - H1).transpose(1, 2) @ W0.transpose(1, 2)).transpose(1, 2)
    return W0 + delta


def dense_error(W0: torch.Tensor, W: torch.Tensor, H0: torch.Tensor, C: torch.Tensor, H1: torch.Tensor) -> float:
    """``||W0 X0 - W X1||^2 / ||W0 X0||^2`` from the paired statistics (grouped, float64).

    Example:
        >>> H = torch.eye(2, dtype=torch.float64).unsqueeze(0)
        >>> dense_error(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[3.0, 0.0]]]), H, H, H)
        0.64
    """
    W0, W = W0.to(H0.dtype), W.to(H0.dtype)
    den = float(torch.einsum("grc,gcd,grd->", W0, H0, W0))
    num = den - 2 * float(torch.einsum("grc,gcd,grd->", W0, C, W)) + float(torch.einsum("grc,gcd,grd->", W, H1, W))
    return max(num, 0.0) / den if den > 0 else (0.0 if num == 0 else math.inf)


def _upper_inverse_factor(H: torch.Tensor, damp: float, name: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag) I)^-1`` (batched), and the
    dampening fraction used; dampening is raised tenfold until ``H`` is positive definite."""
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    mean = diag.mean(dim=-1, keepdim=True).clamp_min(1e-12)
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    frac = max(float(damp), 1e-10)
    for _ in range(_DAMP_TRIES):
        L, info = torch.linalg.cholesky_ex(H + (frac * mean).unsqueeze(-1) * eye)
        if not bool(info.any()):
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if not bool(info.any()) and bool(torch.isfinite(U).all()):
                return U, frac
        frac *= 10.0
    raise NumericalError(
        f"OBS: the Hessian of layer {name!r} is not positive definite even with dampening "
        f"{frac / 10:g} x mean(diag); raise obs_damp or exclude the layer"
    )


def sparsegpt_(W: torch.Tensor, H: torch.Tensor, k: int, block_size: int = 128,
               damp: float = 0.01, name: str = "layer") -> tuple[torch.Tensor, dict[str, Any]]:
    """Prune ``k`` weights of ``W`` (``[groups, rows, cols]``, float64, changed in place) with
    SparseGPT's OBS procedure on the Hessian ``H`` (``[groups, cols, cols]``).

    Returns:
        ``(removed, info)``: a bool tensor like ``W`` (True = removed; exactly ``k``), and
        ``{"damp": fraction used, "dead_columns": columns whose input was always 0}``.

    Raises:
        NumericalError: ``H`` is not finite, or not positive definite after dampening.

    Example:
        >>> W = torch.tensor([[[1.0, 0.1, -2.0, 0.5]]], dtype=torch.float64)
        >>> H = torch.eye(4, dtype=torch.float64).unsqueeze(0)
        >>> removed, _ = sparsegpt_(W, H, 2)
        >>> removed.tolist(), W.tolist()
        ([[[False, True, False, True]]], [[[1.0, 0.0, -2.0, 0.0]]])
    """
    if not bool(torch.isfinite(H).all()):
        raise NumericalError(f"OBS: the Hessian of layer {name!r} holds NaN or Inf")
    H = H.clone()
    cols = W.shape[2]
    dead = torch.diagonal(H, dim1=-2, dim2=-1) == 0  # an input that was always 0: free to remove
    idx = torch.arange(cols, device=H.device)
    H[:, idx, idx] = torch.where(dead, torch.ones_like(H[:, idx, idx]), H[:, idx, idx])
    U, frac = _upper_inverse_factor(H, damp, name)
    removed = torch.zeros_like(W, dtype=torch.bool)
    done = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        n = i2 - i1
        W1 = W[:, :, i1:i2].clone()
        U1 = U[:, i1:i2, i1:i2]
        d = torch.diagonal(U1, dim1=-2, dim2=-1)  # [g, n]
        # saliency of each weight of the block on the weights as updated so far
        score = W1 ** 2 / (d ** 2).unsqueeze(1)
        score = torch.where(dead[:, None, i1:i2], torch.zeros_like(score), score)
        want = round(k * i2 / cols) - done  # cumulative count: the layer ends at exactly k
        mask1 = smallest_k([score], want)[0]
        done += want
        Err1 = torch.zeros_like(W1)
        for i in range(n):
            w = W1[:, :, i]
            q = torch.where(mask1[:, :, i], torch.zeros_like(w), w)
            err = (w - q) / d[:, i].unsqueeze(1)  # [g, rows]
            W1[:, :, i:] -= err.unsqueeze(2) * U1[:, i, i:].unsqueeze(1)
            W1[:, :, i] = q
            Err1[:, :, i] = err
        W[:, :, i1:i2] = W1
        W[:, :, i2:] -= Err1 @ U[:, i1:i2, i2:]
        removed[:, :, i1:i2] = mask1
    W[removed] = 0.0
    return removed, {"damp": frac, "dead_columns": int(dead.sum())}


def output_error(W0: torch.Tensor, W1: torch.Tensor, H: torch.Tensor) -> float:
    """``||W0 X - W1 X||^2 / ||W0 X||^2`` from ``H = 2 X X^T / samples`` (grouped, float64).

    Example:
        >>> H = torch.eye(2, dtype=torch.float64).unsqueeze(0)
        >>> output_error(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[3.0, 0.0]]]), H)
        0.64
    """
    W0, W1 = W0.to(H.dtype), W1.to(H.dtype)
    D = W0 - W1
    num = float(torch.einsum("grc,gcd,grd->", D, H, D))
    den = float(torch.einsum("grc,gcd,grd->", W0, H, W0))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def _progress(progress: bool, total: int) -> tuple[Callable[[str], None], Callable[[], None]]:
    if not progress:
        return (lambda _name: None), (lambda: None)
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    bar.start()
    task = bar.add_task("OBS pruning", total=total)
    return (lambda name: bar.update(task, advance=1, description=f"OBS {name}")), bar.stop


@torch.no_grad()
def METHOD(model: nn.Module, config: Any, layers: list[str], ratios: dict[str, float],
           data: Any = None, progress: bool = False) -> Pruned:
    """OBS-prune ``model`` in place (the registry's ``obs`` method).

    Args:
        model: the copy :func:`edgeopt.prune.prune` made (run in eval mode).
        config: the PruneConfig: ``calibration_samples``, ``obs_damp``, ``obs_block_size``,
            ``seed``; a ``global`` scope is not supported (each layer keeps its own ratio).
        layers: the chosen layers; pruned in model order.
        ratios: ``{layer: fraction removed}``; each layer ends with exactly
            ``round(ratio * numel)`` zeros.
        data: a DataModule (``data.calibration(n, seed)``).
        progress: a progress bar over the layers.

    Returns:
        ``Pruned`` with keep-masks; ``info["layers"][name]`` holds ``obs_error`` and
        ``magnitude_error`` (relative output errors on the layer's calibration inputs),
        ``damp`` and ``dead_columns``; ``info["calibration_samples"]`` the images used.

    Raises:
        ConfigError: no data, or ``scope='global'``.
        NumericalError: a Hessian is not positive definite after dampening, or NaN/Inf.
        UnsupportedModelError: a chosen layer is not Linear/Conv1d/Conv2d.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> from edgeopt.prune.config import PruneConfig
        >>> data = get_dataset("synthetic")
        >>> m = create_model("simple_cnn", data.spec).eval()
        >>> out = METHOD(m, PruneConfig(method="obs", calibration_samples=32), ["features.1.0"],
        ...              {"features.1.0": 0.5}, data)
        >>> int((m.features[1][0].weight == 0).sum()), m.features[1][0].weight.numel() // 2
        (9216, 9216)
    """
    if getattr(config, "scope", "local") == "global":
        raise ConfigError("OBS pruning prunes each layer to its own ratio: use scope='local' "
                          "(or method='unstructured' for one global magnitude threshold)")
    if data is None or not hasattr(data, "calibration"):
        raise ConfigError("OBS pruning needs calibration images: pass a DataModule as data "
                          "(prune(model, config, data))")
    for n in layers:  # an unsupported layer fails before any work
        m = model.get_submodule(n)
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            layer_columns(m, torch.zeros(1))
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    images = data.calibration(config.calibration_samples, seed=config.seed).to(param.device)
    masks: dict[str, torch.Tensor] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    chosen = set(layers)
    order = [n for n, _ in model.named_modules() if n in chosen]
    # "dense": each layer reproduces the unpruned model's output (correcting the error the
    # layers before it left); "layer": SparseGPT's own target, the layer's output on the
    # already pruned inputs. The dense copy costs one model of memory and a second forward.
    dense = copy.deepcopy(model).eval() if getattr(config, "obs_target", "layer") == "dense" else None
    step, stop = _progress(progress, len(order))
    try:
        for i, name in enumerate(order):
            module = model.get_submodule(name)
            if i and getattr(config, "recalibrate_bn", False):
                # the layers pruned so far shifted their outputs: the Hessian of this layer is
                # taken on the activations the deployed model will see once its batch norms are
                # re-estimated (edgeopt.prune.bn_recalibration), not on stale statistics
                recalibrate_batchnorm_(model, images)
            W0 = grouped_weight(module)
            k = removal_count(module.weight.numel(), ratios.get(name, 0.0))
            magnitude = W0.masked_fill(smallest_k([W0.abs()], k)[0], 0.0)
            if dense is None:
                H = layer_hessian(model, name, images)
                W = W0.clone()
                removed, info = sparsegpt_(W, H, k, config.obs_block_size, config.obs_damp, name)
                info["obs_error"] = round(output_error(W0, W, H), 8)
                info["magnitude_error"] = round(output_error(W0, magnitude, H), 8)
            else:
                H0, C, H = paired_statistics(dense, model, name, images)
                W = dense_target(W0, C, H, config.obs_damp)
                removed, info = sparsegpt_(W, H, k, config.obs_block_size, config.obs_damp, name)
                info["obs_error"] = round(dense_error(W0, W, H0, C, H), 8)
                info["magnitude_error"] = round(dense_error(W0, magnitude, H0, C, H), 8)
            per_layer[name] = info
            module.weight.copy_(W.reshape(module.weight.shape).to(module.weight.dtype))
            masks[name] = ~removed.reshape(module.weight.shape)
            step(name)
    finally:
        stop()
        model.train(was_training)
    return Pruned(model=model, masks=masks,
                  info={"calibration_samples": int(images.shape[0]), "layers": per_layer})
