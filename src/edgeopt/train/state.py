"""``train_state.pt``: everything needed to resume a run exactly, saved atomically.

The file holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``: a state file from elsewhere cannot run code.
It also holds the model weights, so weights and optimizer state always come from the
same step (two separate files could be torn apart by a kill between the two writes).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeopt._io import write_with_atomic
from edgeopt.errors import ConfigError, ModelLoadError, brief

STATE_FILE = "train_state.pt"
STATE_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (CPU and every CUDA device).

    Example:
        >>> seed_everything(0); a = torch.rand(1)
        >>> seed_everything(0); bool(torch.equal(a, torch.rand(1)))
        True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The RNG states of ``random``, ``numpy`` and ``torch`` as weights_only-safe values.

    numpy's state array becomes an int64 tensor and Python's state tuple a list, because
    ``weights_only`` loading refuses numpy arrays and arbitrary tuples' classes.

    Example:
        >>> s = capture_rng(); x = torch.rand(2); restore_rng(s)
        >>> bool(torch.equal(x, torch.rand(2)))
        True
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """What must match for a state to be resumed into ``model``: arch and tensor shapes."""
    arch = getattr(model, "edgeopt_arch", None) or {"name": type(model).__name__, "kwargs": {}}
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"arch": str(arch.get("name", "")), "shapes": shapes}


def save_train_state(out_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``out_dir/train_state.pt`` atomically (temporary file, fsync, rename).

    Args:
        out_dir: the run folder.
        state: a dict of tensors, numbers, strings, lists and dicts.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> p = save_train_state(d, {"epoch": 1, "rng": capture_rng()})
        >>> load_train_state(d)["epoch"]
        1
    """
    path = Path(out_dir) / STATE_FILE
    payload = dict(state, version=STATE_VERSION)
    return write_with_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_train_state(out_dir: str | Path) -> dict[str, Any] | None:
    """Load ``out_dir/train_state.pt`` with ``weights_only=True``; ``None`` if absent.

    Raises:
        ModelLoadError: if the file is corrupt or holds anything but plain data.
    """
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or unsafe pickles all end here
        from edgeopt.models.weights import unsafe_load_refusal

        # never torch's advice to retry with weights_only=False: that would run the file's code
        refused = unsafe_load_refusal(exc, path, "delete it (or use another out_dir) to start fresh")
        if refused is not None:
            raise refused from None
        msg = brief(exc, 200)
        raise ModelLoadError(
            f"cannot load {path} (corrupt or not an edgeopt train state: {msg}); "
            "delete it to start fresh"
        ) from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ModelLoadError(f"{path} is not an edgeopt train state (version {STATE_VERSION})")
    return state


def check_compatible(state: dict[str, Any], model: torch.nn.Module, data_key: dict[str, Any],
                     batch_size: int, path: str | Path) -> None:
    """Raise a one-line error if ``state`` was saved for another model, dataset or batch size.

    Raises:
        ModelLoadError: the model's architecture or tensor shapes differ.
        ConfigError: the dataset or the batch size differ (the saved position inside an
            epoch would point at other images).
    """
    fp = model_fingerprint(model)
    saved = state.get("model_fingerprint", {})
    if saved.get("arch") != fp["arch"] or saved.get("shapes") != fp["shapes"]:
        diff = sorted(set(saved.get("shapes", {})) ^ set(fp["shapes"]))
        changed = [k for k in fp["shapes"] if k in saved.get("shapes", {})
                   and saved["shapes"][k] != fp["shapes"][k]]
        detail = (diff or changed)[:3]
        raise ModelLoadError(
            f"{path} was saved for model '{saved.get('arch')}', not '{fp['arch']}'"
            f"{' (differs at ' + ', '.join(detail) + ')' if detail else ''}; "
            "use another out_dir or resume=False"
        )
    if state.get("data") != data_key:
        raise ConfigError(
            f"{path} was saved for data {state.get('data')}, not {data_key}; "
            "use another out_dir or resume=False"
        )
    if state.get("batch_size") != batch_size:
        raise ConfigError(
            f"{path} was saved with batch_size={state.get('batch_size')}, not {batch_size}; "
            "resume with the same batch size or use resume=False"
        )
