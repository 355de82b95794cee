"""load_weights_: fill a model from safetensors or a weights-only torch file, safely.

The file kind is sniffed from its first bytes, never trusted from the suffix. A ``.pt`` /
``.pth`` file is read with ``torch.load(..., weights_only=True)``, so a file that needs code
to load (a pickle with a ``__reduce__`` payload, a pickled module) is refused, never run.
Before loading, the file's tensors are compared with the model's, and a mismatch is one
line naming the first tensors that differ.
"""

from __future__ import annotations

import pickle
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
    kind = _sniff(p)
    if kind == "safetensors":
        state = _read_safetensors(p)
    elif kind == "torch":
        state = _extract_state_dict(_read_torch(p), p)
    else:
        size = p.stat().st_size
        what = "is empty" if size == 0 else "is neither a safetensors nor a PyTorch weights file"
        raise ModelLoadError(
            f"{p} {what}; give a .safetensors file or a state_dict saved with torch.save"
        )
    state = _strip_prefixes(state, model)
    _check_fit(model, state, p)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # pragma: no cover - _check_fit catches the usual cases
        raise ModelLoadError(f"{p} does not fit the model: {' '.join(str(exc).split())}") from None
    return model


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
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise ModelLoadError(
                f"refused to load {p}: it holds objects or code that a weights-only load does "
                f"not allow (it could run code); re-save it as a state_dict of tensors "
                f"(torch.save(model.state_dict(), path)) or as safetensors"
            ) from None
        raise ModelLoadError(f"{p} is a corrupt PyTorch file ({exc}); re-save it") from None
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        msg = brief(exc, 200)
        raise ModelLoadError(
            f"{p} is a corrupt or truncated PyTorch file ({msg}); re-save it"
        ) from None


def _extract_state_dict(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
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
    problems: list[str] = []
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            problems.append(
                f"'{k}' is {list(v.shape)} in the file but {list(own[k].shape)} in the model"
            )
    for k, v in own.items():
        # BatchNorm fills a missing num_batches_tracked itself (older torchvision files)
        if k not in state and not k.endswith("num_batches_tracked"):
            problems.append(f"missing '{k}' {list(v.shape)}")
    for k, v in state.items():
        if k not in own:
            problems.append(f"unexpected '{k}' {list(v.shape)}")
    if problems:
        arch = (getattr(model, "edgeopt_arch", None) or {}).get("name") or type(model).__name__
        shown = "; ".join(problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ModelLoadError(
            f"weights in {p} do not fit architecture '{arch}': {shown}{more}; build the model "
            f"with the architecture, kwargs and ModelSpec (classes, channels) they were trained with"
        )
