"""The structure record: how a structurally pruned model differs from its base architecture.

Structured pruning changes module shapes (a Conv2d of 64 filters keeps 40), so the pruned
weights no longer load into a freshly built base model. Instead of pickling the pruned
model, a checkpoint stores this JSON record beside the weights (sidecar key ``"pruning"``):
per module whose shape changed, its type, its shape attributes (``in_channels``,
``out_channels``, ``groups``, ``in_features``, ``num_features``, ``normalized_shape``,
...) and the shapes of its parameters and buffers. :func:`apply_record_` rebuilds those
shapes on the base model (empty tensors of the recorded shapes), after which the weights
load as usual.

Record layout (JSON)::

    {"format": "edgeopt_prune_record", "version": 1,
     "modules": {"layer1.0.conv1": {"type": "Conv2d",
                                    "attrs": {"in_channels": 64, "out_channels": 40, "groups": 1},
                                    "params": {"weight": [40, 64, 3, 3], "bias": null},
                                    "buffers": {}}, ...},
     "channels": {"layer1.0.conv1": [64, 40], ...},   # Conv/Linear that changed: outputs before, after
     "kept": {"layer1.0.conv1": [0, 2, 3, ...], ...}}  # optional: kept output channels
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeopt.errors import ModelLoadError, UnsupportedModelError, brief
from edgeopt.prune.layers import prunable_layers

RECORD_FORMAT = "edgeopt_prune_record"
RECORD_VERSION = 1

#: attributes that fix a module's shapes (Conv, Linear, norms, PReLU, Embedding, ...)
SHAPE_ATTRS = (
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "normalized_shape", "num_channels", "num_groups", "num_parameters", "embedding_dim",
    "num_embeddings", "embed_dim", "num_heads", "kdim", "vdim", "head_dim",
)


def _attrs(m: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in SHAPE_ATTRS:
        v = vars(m).get(a)
        if isinstance(v, int) and not isinstance(v, bool):
            out[a] = int(v)
        elif isinstance(v, (tuple, list)) and v and all(isinstance(i, int) for i in v):
            out[a] = [int(i) for i in v]
    return out


def _shapes(tensors: dict[str, Any]) -> dict[str, list[int] | None]:
    return {k: (list(v.shape) if v is not None else None) for k, v in tensors.items()}


def make_record(base_model: nn.Module, pruned_model: nn.Module,
                kept: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """The JSON record of every module whose shape differs between base and pruned model.

    Args:
        base_model: the model before pruning (same architecture, same module names).
        pruned_model: the structurally pruned model.
        kept: optional ``{layer: kept output-channel indices}`` to store with the record.

    Returns:
        A JSON-serialisable dict (see the module docstring).

    Raises:
        UnsupportedModelError: the pruned model has a module the base lacks, or of another
            type (pruning replaced a module: no record can rebuild that).

    Example:
        >>> from torch import nn
        >>> base = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 4, 1))
        >>> pruned = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
        >>> r = make_record(base, pruned)
        >>> sorted(r["modules"]), r["modules"]["1"]["buffers"]["running_mean"], r["channels"]
        (['0', '1', '2'], [8], {'0': [16, 8], '2': [4, 4]})
    """
    base_mods = dict(base_model.named_modules())
    modules: dict[str, Any] = {}
    for name, m in pruned_model.named_modules():
        b = base_mods.get(name)
        if b is None or type(b) is not type(m):
            raise UnsupportedModelError(
                f"pruning replaced module '{name}' ({type(m).__name__}); the structure record can "
                f"only resize modules of the base architecture"
            )
        now = (_attrs(m), _shapes(m._parameters), _shapes(m._buffers))
        if now != (_attrs(b), _shapes(b._parameters), _shapes(b._buffers)):
            modules[name] = {"type": type(m).__name__, "attrs": now[0], "params": now[1],
                             "buffers": now[2]}
    channels = {}
    for name in prunable_layers(base_model):
        before = int(base_model.get_submodule(name).weight.shape[0])
        after = int(pruned_model.get_submodule(name).weight.shape[0])
        if name in modules:
            channels[name] = [before, after]
    record: dict[str, Any] = {"format": RECORD_FORMAT, "version": RECORD_VERSION,
                              "modules": modules, "channels": channels}
    if kept:
        record["kept"] = {k: [int(i) for i in v] for k, v in kept.items()}
    return record


def apply_record_(model: nn.Module, record: dict[str, Any], *, verify: bool = True) -> nn.Module:
    """Resize the modules of a freshly built base model as ``record`` says (in place).

    Shape attributes are set and the recorded parameters/buffers are replaced by zero
    tensors of the recorded shapes (same dtype and device, same ``requires_grad``), so the
    pruned weights then load with :func:`edgeopt.models.load_weights_`. With ``verify``
    a forward pass on the model's ModelSpec example input (if it carries one) checks that
    the shapes fit together.

    Args:
        model: the base architecture, e.g. from ``create_model``.
        record: a record from :func:`make_record` (e.g. read from a checkpoint sidecar).
        verify: run the forward-pass check.

    Returns:
        ``model`` itself.

    Raises:
        ModelLoadError: a malformed record, a module it names that the model lacks or that
            has another type, or a forward pass that fails on the rebuilt shapes.

    Example:
        >>> from torch import nn
        >>> base = lambda: nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 4, 1))
        >>> pruned = base(); pruned[0] = nn.Conv2d(3, 8, 3); pruned[1] = nn.BatchNorm2d(8)
        >>> pruned[2] = nn.Conv2d(8, 4, 1)
        >>> m = apply_record_(base(), make_record(base(), pruned))
        >>> m[0].out_channels, tuple(m[2].weight.shape), m.load_state_dict(pruned.state_dict())
        (8, (4, 8, 1, 1), <All keys matched successfully>)
    """
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ModelLoadError(f'the pruning record is not an {RECORD_FORMAT} (no "format" key); '
                             f"the checkpoint sidecar is damaged or hand-edited")
    if not isinstance(record.get("version"), int) or record["version"] > RECORD_VERSION:
        raise ModelLoadError(f"pruning record version {record.get('version')!r}: this edgeopt "
                             f"reads up to {RECORD_VERSION}: upgrade edgeopt")
    mods = dict(model.named_modules())
    try:
        for name, entry in (record.get("modules") or {}).items():
            m = mods.get(name)
            if m is None or type(m).__name__ != entry["type"]:
                found = type(m).__name__ if m is not None else "nothing"
                raise ModelLoadError(
                    f"the pruning record resizes {entry['type']} '{name}' but the model has "
                    f"{found} there: the checkpoint was pruned from another architecture"
                )
            for a, v in entry.get("attrs", {}).items():
                if a not in SHAPE_ATTRS:  # a file is data: it may set shape numbers, nothing else
                    raise ModelLoadError(f"the pruning record sets '{name}.{a}', which is not a shape "
                                         f"attribute; the checkpoint sidecar is damaged or hand-edited")
                setattr(m, a, tuple(int(i) for i in v) if isinstance(v, list) else int(v))
            unknown = [k for k in entry.get("params", {}) if k not in m._parameters] + \
                      [k for k in entry.get("buffers", {}) if k not in m._buffers]
            if unknown:
                raise ModelLoadError(f"the pruning record resizes '{name}.{unknown[0]}', which the "
                                     f"{type(m).__name__} does not have; the checkpoint sidecar is damaged")
            for k, shape in entry.get("params", {}).items():
                old = m._parameters.get(k)
                if shape is None:
                    m._parameters[k] = None
                    continue
                ref = old if old is not None else _any_tensor(model)
                m._parameters[k] = nn.Parameter(
                    torch.zeros([int(s) for s in shape], dtype=ref.dtype, device=ref.device),
                    requires_grad=old.requires_grad if old is not None else True)
            for k, shape in entry.get("buffers", {}).items():
                old = m._buffers.get(k)
                if shape is None:
                    m._buffers[k] = None
                    continue
                ref = old if old is not None else _any_tensor(model)
                m._buffers[k] = torch.zeros([int(s) for s in shape], dtype=ref.dtype, device=ref.device)
    except ModelLoadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ModelLoadError(f"the pruning record is malformed ({brief(exc, 200)}); the "
                             f"checkpoint sidecar is damaged or hand-edited") from None
    if verify:
        _check_forward(model)
    return model


def _any_tensor(model: nn.Module) -> torch.Tensor:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t
    return torch.zeros(())


def _check_forward(model: nn.Module) -> None:
    from edgeopt.spec import SPEC_ATTR

    spec = getattr(model, SPEC_ATTR, None)
    if spec is None:
        return
    ref = _any_tensor(model)
    x = torch.zeros((1, *spec.input_shape), dtype=ref.dtype, device=ref.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - any failure means the rebuilt shapes do not fit together
        raise ModelLoadError(
            f"the pruning record does not fit this model: a forward pass of "
            f"{tuple(x.shape)} fails ({brief(exc, 200)}); the checkpoint was pruned from "
            f"another architecture"
        ) from None
    finally:
        model.train(was_training)
