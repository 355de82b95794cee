"""Multiply-accumulates (MACs), FLOPs and bytes moved by one forward pass.

Two independent counts, checked against each other in the tests:

* **Totals** come from ``torch.utils.flop_counter.FlopCounterMode``, which counts every
  matmul / convolution / attention op dispatched (including functional calls that are not
  modules). It reports FLOPs; for matmul and convolution one MAC is two FLOPs, so
  ``total_macs = total_flops / 2``. Bias adds, BatchNorm, activations and pooling are not
  counted (the usual convention; they are a small fraction of conv nets).
* **Per layer** comes from forward hooks on leaf modules with the textbook formulas:
  conv ``N·Cout·(Cin/groups)·kh·kw·Hout·Wout``, transposed conv
  ``N·Cin·(Cout/groups)·kh·kw·Hin·Win``, linear ``(rows)·in·out``. Other leaf modules take
  their share from the flop counter's per-module numbers. Whatever the hooks cannot place
  (functional matmuls outside any leaf module) is reported as ``unattributed_macs``.

Bytes moved (for :mod:`edgeopt.evaluate.energy`): per leaf layer, its own weights and
buffers (read once) plus the activations it reads (tensor inputs) and writes (output),
counted in elements and in bytes at the model's own dtypes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from edgeopt.errors import ConfigError, UnsupportedModelError, brief

# Modules that only reshape or pass data through: no arithmetic and, once compiled by a
# runtime, no activation traffic of their own (views are free).
_NO_TRAFFIC = ("Identity", "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d")


@dataclasses.dataclass(frozen=True)
class MacsResult:
    """MACs and bytes moved by one forward pass at ``batch_size``.

    Attributes:
        total_macs: from the flop counter (``total_flops // 2``).
        total_flops: FLOPs counted by ``FlopCounterMode``.
        hook_macs: sum of the per-layer formula counts (conv / linear / transposed conv).
        unattributed_macs: ``total_macs`` minus everything placed on a leaf layer.
        per_layer: one dict per leaf module that ran: ``{"name", "type", "macs", "params",
            "calls", "weight_elements", "activation_elements", "weight_bytes",
            "activation_bytes", "source"}``; ``source`` is ``"formula"`` (conv / linear
            hooks) or ``"flop_counter"`` (the counter's per-module share).
        weight_elements: every parameter and buffer of the model (read once per inference).
        activation_elements: activations read and written, summed over leaf layers.
        weight_bytes / activation_bytes: the same in bytes at the model's dtypes.
        batch_size: images in the counted forward pass.
    """

    total_macs: int
    total_flops: int
    hook_macs: int
    unattributed_macs: int
    per_layer: list[dict[str, Any]]
    weight_elements: int
    activation_elements: int
    weight_bytes: int
    activation_bytes: int
    batch_size: int

    def bytes_moved(self, bytes_per_element: float | None = None) -> dict[str, float]:
        """``{"weights", "activations"}`` bytes; at ``bytes_per_element`` if given (1 for int8).

        Example:
            >>> r = MacsResult(0, 0, 0, 0, [], 10, 20, 40, 80, 1)
            >>> r.bytes_moved(1)
            {'weights': 10, 'activations': 20}
        """
        if bytes_per_element is None:
            return {"weights": self.weight_bytes, "activations": self.activation_bytes}
        return {
            "weights": self.weight_elements * bytes_per_element,
            "activations": self.activation_elements * bytes_per_element,
        }

    def to_dict(self, per_layer: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not per_layer:
            d.pop("per_layer")
        return d


def layer_macs(module: Any, inputs: tuple, output: Any) -> int | None:
    """MACs of one call of a conv / transposed conv / linear module; None for other types.

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> x = torch.zeros(1, 3, 16, 16)
        >>> layer_macs(conv, (x,), conv(x)) == 8 * 3 * 3 * 3 * 16 * 16
        True
    """
    from torch import nn

    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        x = inputs[0]
        n, spatial_in = x.shape[0], math.prod(x.shape[2:])
        k = math.prod(module.kernel_size)
        return n * module.in_channels * (module.out_channels // module.groups) * k * spatial_in
    if isinstance(module, nn.modules.conv._ConvNd):
        n, spatial_out = output.shape[0], math.prod(output.shape[2:])
        k = math.prod(module.kernel_size)
        return n * module.out_channels * (module.in_channels // module.groups) * k * spatial_out
    if isinstance(module, nn.Linear):
        rows = output.numel() // module.out_features  # every leading dim: batch, tokens, ...
        return rows * module.in_features * module.out_features
    return None


def _tensors(obj: Any):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def count_macs(model: Any, spec: Any = None, batch_size: int = 1) -> MacsResult:
    """Count MACs, FLOPs and bytes moved by one forward pass of ``model``.

    Args:
        model: an ``nn.Module`` (its mode is restored afterwards; weights are not changed).
        spec: the ModelSpec (input shape); None uses the one the model carries.
        batch_size: images in the forward pass (MACs scale linearly with it).

    Returns:
        A MacsResult with totals from the flop counter and a per-layer breakdown from hooks.

    Raises:
        ConfigError: no spec and the model carries none, or ``batch_size < 1``.
        UnsupportedModelError: the forward pass fails on an input of the spec's shape.

    Example:
        >>> import torch
        >>> from edgeopt.spec import ModelSpec
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> r = count_macs(net, ModelSpec((1, 2, 2), 3, (0.0,), (1.0,)))
        >>> r.total_macs, r.total_flops, r.hook_macs
        (12, 24, 12)
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgeopt.spec import get_spec

    if batch_size < 1:
        raise ConfigError(f"count_macs: batch_size={batch_size} must be >= 1")
    spec = spec if spec is not None else get_spec(model)
    try:
        p = next(iter(model.parameters()))
        device, dtype = p.device, (p.dtype if p.is_floating_point() else torch.float32)
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = spec.example_input(batch_size).to(device=device, dtype=dtype)

    names = {m: n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if next(iter(m.children()), None) is None]
    stats: dict[str, dict[str, Any]] = {}
    order: list[str] = []

    def hook(module, inputs, output):
        name = names.get(module, "") or type(module).__name__
        s = stats.get(name)
        if s is None:
            own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
            s = stats[name] = {
                "name": name,
                "type": type(module).__name__,
                "macs": 0,
                "params": sum(int(t.numel()) for t in module.parameters(recurse=False)),
                "calls": 0,
                # Weights are read once per inference, however often the layer is called.
                "weight_elements": sum(int(t.numel()) for t in own),
                "weight_bytes": sum(int(t.numel()) * t.element_size() for t in own),
                "activation_elements": 0,
                "activation_bytes": 0,
                "source": "flop_counter",  # "formula" once a conv/linear formula counts it
            }
            order.append(name)
        s["calls"] += 1
        macs = layer_macs(module, inputs, output)
        if macs is not None:
            s["macs"] += int(macs)
            s["source"] = "formula"
        if type(module).__name__ not in _NO_TRAFFIC:
            acts = list(_tensors(inputs)) + list(_tensors(output))  # read inputs, write output
            s["activation_elements"] += sum(int(t.numel()) for t in acts)
            s["activation_bytes"] += sum(int(t.numel()) * t.element_size() for t in acts)

    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter, torch.no_grad():
            model(x)
    except Exception as exc:
        msg = brief(exc, 200)
        raise UnsupportedModelError(
            f"count_macs: the forward pass failed on an input of shape {tuple(x.shape)}: {msg}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    total_flops = int(counter.get_total_flops())
    # The counter's per-module table is keyed "RootClass.fqn"; used for leaf modules
    # without a formula (e.g. a custom op inside a leaf).
    root = type(model).__name__
    module_flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    per_layer = []
    for name in order:
        s = stats[name]
        if s["source"] != "formula":
            s["macs"] = int(module_flops.get(f"{root}.{name}", 0)) // 2
        per_layer.append(s)
    hook_macs = sum(s["macs"] for s in per_layer if s["source"] == "formula")
    placed = sum(s["macs"] for s in per_layer)
    total_macs = total_flops // 2
    # Every weight and buffer of the model, including ones held by non-leaf modules (a
    # class token, a positional embedding), is read once per inference.
    weights = list(model.parameters()) + list(model.buffers())
    return MacsResult(
        total_macs=total_macs,
        total_flops=total_flops,
        hook_macs=hook_macs,
        unattributed_macs=total_macs - placed,
        per_layer=per_layer,
        weight_elements=sum(int(t.numel()) for t in weights),
        activation_elements=sum(s["activation_elements"] for s in per_layer),
        weight_bytes=sum(int(t.numel()) * t.element_size() for t in weights),
        activation_bytes=sum(s["activation_bytes"] for s in per_layer),
        batch_size=batch_size,
    )
