"""load_weights_: fill a model from safetensors or a weights-only torch file, safely.

The file kind is sniffed from its first bytes, never trusted from the suffix. A ``.pt`` /
``.pth`` file is read with ``torch.load(..., weights_only=True)``, so a file that needs code
to load (a pickle with a ``__reduce__`` payload, a pickled module) is refused, never run.
Before loading, the file's tensors are compared with the model's, and a mismatch is one
line naming the first tensors that differ.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ModelLoadError, brief

_STATE_KEYS = ("state_dict", "model", "model_state_dict")  # where trainers nest weights
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def load_weights_(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` in place, from safetensors or a weights-only torch file.

    A ``.pt``/``.pth`` file may hold a state_dict, or a dict with a ``"state_dict"``,
    ``"model"`` or ``"model_state_dict"`` key; ``module.``/``_orig_mod.`` prefixes (DDP,
    torch.compile) are removed. It is read with ``torch.load(weights_only=True)``, so a
    file that needs code to load is refused, never run.

    Args:
        model: the model to fill.
        path: the weights file (``NAME`` finds ``NAME.safetensors``).

    Returns:
        ``model``.

    Raises:
        ModelLoadError: missing, corrupt, truncated or foreign file, a file that needs
            code, or weights that do not fit (the first mismatched tensors are named).

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> p = tempfile.mkdtemp() + "/lin.pt"
        >>> torch.save({"state_dict": nn.Linear(2, 2).state_dict()}, p)
        >>> load_weights_(nn.Linear(2, 2), p).weight.shape
        torch.Size([2, 2])
    """
    p = Path(path)
    if not p.exists() and p.with_name(p.name + ".safetensors").is_file():
        p = p.with_name(p.name + ".safetensors")
    if not p.is_file():
        raise ModelLoadError(f"weights file not found: {p}; check the path")
    if _sniff(p) == "torch" and p.name.lower().endswith(".safetensors"):
        # A pickle posing as safetensors (it used to fail deep in safetensors with "header
        # too large"): say what it is, and how to read it safely on purpose.
        raise ModelLoadError(
            f"{p} is not a safetensors file: it is a PyTorch torch.save file (a pickle) named "
            f".safetensors; import it with `edgeopt import {p} --model NAME` (it reads the file "
            f"with torch.load(weights_only=True), which refuses code), or rename it to .pt"
        )
    return load_state_(model, read_state_dict(p), p)


def load_state_(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> nn.Module:
    """Load a state_dict read from ``source`` into ``model`` (in place), strictly.

    ``module.``/``_orig_mod.`` prefixes are removed; tensors that do not fit are a one-line
    ModelLoadError naming the first of them. :func:`load_weights_` and the sparse
    checkpoints of :mod:`edgeopt.prune.sparse_storage` read their files, then call this.

    Example:
        >>> from torch import nn
        >>> load_state_(nn.Linear(2, 2), {"module.weight": torch.ones(2, 2), "module.bias": torch.zeros(2)}, "x").weight.sum().item()
        4.0
    """
    p = Path(source)
    file_meta = getattr(state, "_metadata", None)
    stripped = _strip_prefixes(state, model)
    _check_fit(model, stripped, p)
    # Module versions (state_dict._metadata) are not stored in safetensors, and some modules
    # need them to load (torchvision MNASNet: "version should be set to 1 or 2 instead of
    # None"). A torch file keeps its own (unless prefixes were stripped from its keys);
    # otherwise the versions of the model's own code are the right guess.
    state = with_versions(stripped, model, file_meta if stripped is state else None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # pragma: no cover - _check_fit catches the usual cases
        raise ModelLoadError(f"{p} does not fit the model: {' '.join(str(exc).split())}") from None
    return model


def with_versions(state: Mapping[str, torch.Tensor], model: nn.Module, meta: Any = None) -> dict[str, torch.Tensor]:
    """``state`` as an OrderedDict carrying module versions (``_metadata``) for load_state_dict.

    Some modules need their version to load (torchvision MNASNet: "version should be set to
    1 or 2 instead of None"), and safetensors does not store it: ``meta`` (a torch file's own,
    when its keys were not renamed) wins, else the versions of the model's own code.
    """
    out = collections.OrderedDict(state)
    out._metadata = meta if meta is not None else getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, whatever its name: safetensors or a weights-only torch
    file (unnested from ``state_dict``/``model``/``model_state_dict``; prefixes kept).

    Raises:
        ModelLoadError: missing, empty, corrupt or foreign file, or one that needs code.

    Example:
        >>> import tempfile
        >>> p = tempfile.mkdtemp() + "/m.th"
        >>> torch.save({"state_dict": {"module.w": torch.ones(2)}, "best_prec1": 91.7}, p)
        >>> sorted(read_state_dict(p))
        ['module.w']
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file not found: {p}; check the path")
    kind = _sniff(p)
    if kind == "safetensors":
        return _read_safetensors(p)
    if kind == "torch":
        return _extract_state_dict(_read_torch(p), p)
    what = "is empty" if p.stat().st_size == 0 else "is neither a safetensors nor a PyTorch weights file"
    raise ModelLoadError(
        f"{p} {what}; give a .safetensors file or a state_dict saved with torch.save (a whole ONNX "
        f"model comes in with edgeopt import MODEL.onnx)"
    )


def compare_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, other_shape)`` tensor names of ``state`` against ``model``'s.

    A missing ``num_batches_tracked`` is not counted: BatchNorm fills it itself (older files).

    Example:
        >>> compare_state(nn.Linear(2, 3), {"weight": torch.zeros(3, 3), "x": torch.zeros(1)})
        (['bias'], ['x'], ['weight'])
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    other_shape = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, other_shape


def _sniff(p: Path) -> str:
    """'safetensors', 'torch' or 'unknown', from the first bytes (never from the suffix)."""
    with open(p, "rb") as fh:
        head = fh.read(16)
    # safetensors: u64 little-endian header length, then a JSON object
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    # torch.save zip archive, or the legacy format (a pickle: PROTO opcode 0x80, version 2-5)
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "torch"
    return "unknown"


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        msg = brief(exc, None)
        raise ModelLoadError(
            f"{p} is a corrupt or truncated safetensors file ({msg}); re-save or re-download it"
        ) from None


def _read_torch(p: Path) -> Any:
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4" is noise here
            warnings.simplefilter("ignore")
            # a file object, not the path: torch.load reads any *.safetensors path as
            # safetensors, whatever its bytes (the kind was sniffed from the bytes above)
            with open(p, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = unsafe_load_refusal(
            exc, p, "re-save it as a state_dict of tensors (torch.save(model.state_dict(), path)) "
                    "or as safetensors")
        if refused is not None:
            raise refused from None
        raise ModelLoadError(f"{p} is a corrupt PyTorch file ({brief(exc, 200)}); re-save it") from None
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        msg = brief(exc, 200)
        raise ModelLoadError(
            f"{p} is a corrupt or truncated PyTorch file ({msg}); re-save it"
        ) from None


def unsafe_load_refusal(exc: BaseException, path: str | Path, fix: str) -> ModelLoadError | None:
    """The one-line refusal of a file that ``torch.load(weights_only=True)`` refused, else None.

    torch's own message advises re-running with ``weights_only=False``, which would run
    whatever code the file carries: it is never repeated. The message names the global the
    file needed (e.g. ``posix.system``), says the file was refused for safety, and ``fix``.

    Example:
        >>> e = pickle.UnpicklingError("Weights only load failed. ... Trying to load "
        ...                            "unsupported GLOBAL posix.system whose module posix is blocked.")
        >>> print(unsafe_load_refusal(e, "x.pt", "delete it"))
        refused to load x.pt for safety: it is not a plain weights file (loading it needs posix.system, which could run code); delete it
    """
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "weights only" not in text.lower():
        return None
    m = re.search(r"GLOBAL ([\w.]+)", text)
    needs = f"loading it needs {m.group(1)}" if m else "it holds objects a plain weights file does not"
    return ModelLoadError(
        f"refused to load {path} for safety: it is not a plain weights file ({needs}, which could "
        f"run code); {fix}"
    )


def _extract_state_dict(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            out = collections.OrderedDict(obj)
            out._metadata = getattr(obj, "_metadata", None)  # type: ignore[attr-defined]
            return out
    raise ModelLoadError(
        f"{p} holds no state_dict (a dict of tensors, or a dict with a "
        f"{'/'.join(repr(k) for k in _STATE_KEYS)} key); save model.state_dict()"
    )


def _strip_prefixes(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    own = model.state_dict().keys()
    for prefix in _PREFIXES:
        if (
            state
            and all(k.startswith(prefix) for k in state)
            and not any(k.startswith(prefix) for k in own)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], p: Path) -> None:
    """Raise ModelLoadError naming the first (at most 3) mismatched tensors."""
    own = model.state_dict()
    missing, unexpected, other_shape = compare_state(model, state)
    problems = (
        [f"'{k}' is {list(state[k].shape)} in the file but {list(own[k].shape)} in the model" for k in other_shape]
        + [f"missing '{k}' {list(own[k].shape)}" for k in missing]
        + [f"unexpected '{k}' {list(state[k].shape)}" for k in unexpected]
    )
    if problems:
        arch = (getattr(model, "edgeopt_arch", None) or {}).get("name") or type(model).__name__
        shown = "; ".join(problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ModelLoadError(
            f"weights in {p} do not fit architecture '{arch}': {shown}{more}; build the model "
            f"with the architecture, kwargs and ModelSpec (classes, channels) they were trained with"
        )


def check_finite_weights(model: nn.Module, what: str) -> None:
    """Raise NumericalError naming the first parameter or buffer that holds NaN or Inf.

    A model with NaN weights computes NaN for every input: exporting, comparing or timing
    it measures nothing, and a parity check would blame the export for it.

    Args:
        model: the model to check (float parameters and buffers; integer ones are skipped).
        what: what was about to happen, for the message (e.g. ``"export to onnx"``).

    Raises:
        NumericalError: the tensor, how many of its values are NaN/Inf, and what to do.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> check_finite_weights(m, "export")
        >>> with torch.no_grad():
        ...     _ = m.bias.fill_(float("nan"))
        >>> check_finite_weights(m, "export")
        Traceback (most recent call last):
        ...
        edgeopt.errors.NumericalError: cannot export: tensor 'bias' [2] holds 2 NaN and 0 Inf of 2 values; the model's weights are broken (a diverged training run?): retrain or load another checkpoint
    """
    from edgeopt.errors import NumericalError

    params = {name for name, _ in model.named_parameters()}
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    for name, t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.is_meta:
            continue
        finite = torch.isfinite(t.detach())
        if bool(finite.all()):
            continue
        # a buffer may hold -inf on purpose (an attention mask); batch-norm statistics may not
        if name not in params and not name.endswith(("running_mean", "running_var")) \
                and not bool(torch.isnan(t.detach()).any()):
            continue
        nan = int(torch.isnan(t.detach()).sum())
        raise NumericalError(
            f"cannot {what}: tensor '{name}' {list(t.shape)} holds {nan} NaN and "
            f"{int((~finite).sum()) - nan} Inf of {t.numel()} values; the model's weights are "
            f"broken (a diverged training run?): retrain or load another checkpoint"
        )
