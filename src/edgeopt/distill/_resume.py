"""Resume of :func:`~edgeopt.distill.distill`, seed by seed and arm by arm.

With ``DistillConfig.out_dir`` every arm (``student`` or ``baseline``) of every seed is
saved as soon as it finishes, with a fingerprint of everything that determines it; a
re-run with the same fingerprint reuses it instead of training it again. An arm killed
mid-way continues from the Trainer's last finished epoch. Layout of ``out_dir/runs/seed{N}``:

* ``{arm}.safetensors`` + ``{arm}.json``: the arm's kept model (an edgeopt checkpoint); the
  sidecar's ``extra["distill_arm"]`` holds the fingerprint, the run record (``runs[i][arm]``),
  the wall time and, for ``student``, the method's info. The sidecar is written last, so it
  marks a finished arm; its SHA-256 of the weights must match, or the arm trains again.
* ``{arm}_train/`` (``{arm}_train_2/`` ... for methods that train several models in one arm):
  the Trainer's ``train_state.pt``, ``best``/``last`` checkpoints and ``fingerprint.json``;
  removed once the arm's checkpoint is written.

A different fingerprint never mixes: old arm files are ignored (and overwritten when the new
arm finishes), and an old Trainer state is deleted before the new arm starts training.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from edgeopt.errors import EdgeoptError

RUNS_DIR = "runs"
FINGERPRINT_FILE = "fingerprint.json"
#: DistillConfig fields left out of the fingerprint: where files go, torch's thread count,
#: and which arms run (``seed``/``seeds`` choose the seeds, ``baseline`` whether that arm
#: runs); the arm's own seed is part of its fingerprint.
NOT_FINGERPRINTED = ("out_dir", "threads", "seed", "seeds", "baseline")


def weights_hash(model: nn.Module) -> str:
    """Short hash of a model's weights and buffers (names, shapes, dtypes and values)."""
    from edgeopt.prune.recovery import teacher_fingerprint

    return teacher_fingerprint(model)


def data_fingerprint(data: Any) -> dict[str, Any]:
    """Name, spec and, per split, its size and a hash of its images and labels."""
    spec = data.spec
    out: dict[str, Any] = {"name": str(getattr(data, "name", "")), "input_shape": list(spec.input_shape),
                           "num_classes": int(spec.num_classes), "mean": list(spec.mean),
                           "std": list(spec.std)}
    for name in ("train", "val", "test"):
        split = data.split(name)
        h = hashlib.sha256()
        for t in (getattr(split, "images", None), getattr(split, "labels", None)):
            if t is not None:
                h.update(t.detach().cpu().contiguous().numpy())  # the buffer, not a copy
        out[name] = {"size": len(split), "hash": h.hexdigest()[:16]}
    return out


def fingerprint(config: Any, start: nn.Module, teacher: nn.Module | None, data_fp: dict[str, Any],
                seed: int) -> dict[str, Any]:
    """What determines one seed's arms; ``key`` is a hash of the rest.

    Example:
        >>> from edgeopt.distill.config import DistillConfig
        >>> m = nn.Linear(2, 2)
        >>> key = lambda cfg: fingerprint(cfg, m, None, {}, 0)["key"]
        >>> key(DistillConfig()) == key(DistillConfig(out_dir="x", seeds=3, threads=1))
        True
        >>> key(DistillConfig()) == key(DistillConfig(temperature=2.0))
        False
    """
    cfg = {k: v for k, v in config.to_dict().items() if k not in NOT_FINGERPRINTED}
    arch = getattr(start, "edgeopt_arch", None) or {"name": type(start).__name__}
    fp = {"config": cfg, "seed": int(seed),
          "student": {"arch": arch, "weights": weights_hash(start)},
          "teacher": weights_hash(teacher) if teacher is not None else None, "data": data_fp}
    canonical = json.dumps(fp, sort_keys=True, default=str)
    fp["key"] = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return fp


# The Trainer folders of the arm being trained: train_arm asks for the next one. Unset
# (None) outside distill()'s arms: sweep() and direct calls write nothing.
_ARM: contextvars.ContextVar[TrainDirs | None] = contextvars.ContextVar("edgeopt_distill_arm", default=None)


class TrainDirs:
    """The Trainer folders of one arm, handed out in training order."""

    def __init__(self, seed_dir: Path, arm: str, key: str) -> None:
        self.seed_dir, self.arm, self.key = seed_dir, arm, key
        self.count = 0

    def next(self) -> tuple[str, bool]:
        """``(out_dir, resume)`` for the arm's next Trainer run; a folder of another
        fingerprint loses its Trainer state first."""
        self.count += 1
        d = self.seed_dir / (f"{self.arm}_train" if self.count == 1 else f"{self.arm}_train_{self.count}")
        from edgeopt.train.state import STATE_FILE

        if _read_key(d / FINGERPRINT_FILE) != self.key:
            _remove_trainer_files(d)  # before the new fingerprint: never resume another config
            from edgeopt._io import write_json_atomic

            write_json_atomic(d / FINGERPRINT_FILE, {"key": self.key})
        return str(d), (d / STATE_FILE).is_file()


def current_train_dir() -> tuple[str, bool] | None:
    """``(out_dir, resume)`` for a Trainer run inside one of distill()'s arms, else None."""
    dirs = _ARM.get()
    return dirs.next() if dirs is not None else None


def _read_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _file_sha256(path: Path) -> str:
    from edgeopt._io import file_sha256

    return file_sha256(path)


def _remove_trainer_files(d: Path) -> None:
    from edgeopt.train._checkpoints import OWN_FILES, remove_stale_temps

    if not d.is_dir():
        return
    remove_stale_temps(d)
    for name in (*OWN_FILES, FINGERPRINT_FILE):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()


class ArmStore:
    """The finished arms of one seed, in ``out_dir/runs/seed{N}``."""

    def __init__(self, out_dir: str | Path, seed: int, fp: dict[str, Any]) -> None:
        self.dir = Path(out_dir) / RUNS_DIR / f"seed{seed}"
        self.fp = fp

    def path(self, arm: str) -> Path:
        return self.dir / f"{arm}.safetensors"

    def load(self, arm: str) -> dict[str, Any] | None:
        """The saved ``{"record", "seconds", "info"}`` of ``arm`` when it finished under this
        fingerprint (and its weights are the ones the sidecar describes), else None."""
        from edgeopt.models.checkpoint import read_sidecar

        path = self.path(arm)
        if not path.is_file():
            return None
        try:
            side = read_sidecar(path)
            saved = (side.get("extra") or {}).get("distill_arm") or {}
            if saved.get("key") != self.fp["key"] or saved.get("arm") != arm:
                return None
            if _file_sha256(path) != side.get("sha256"):  # killed between the two renames
                return None
        except (EdgeoptError, OSError, ValueError, AttributeError):
            return None
        return saved

    def load_model(self, arm: str, model: nn.Module) -> nn.Module:
        """``model`` (a copy of the seed's starting student) with the arm's saved weights."""
        from edgeopt.models import load_weights_

        return load_weights_(model, self.path(arm)).eval()

    def save(self, arm: str, model: nn.Module, record: dict[str, Any], seconds: float,
             info: dict[str, Any] | None, step: dict[str, Any]) -> Path:
        """Write the arm's checkpoint (weights, then the sidecar that marks it finished),
        then remove its Trainer folders."""
        from edgeopt.models import save_checkpoint

        lineage = list(getattr(model, "edgeopt_lineage", None) or []) + [step]
        saved = {"key": self.fp["key"], "arm": arm, "fingerprint": {k: v for k, v in self.fp.items() if k != "key"},
                 "record": record, "seconds": float(seconds), "info": info or {}}
        path = save_checkpoint(self.path(arm), model, history=record.get("history"),
                               metrics={"test_acc": record["test_acc"], "val_acc": record["val_acc"]},
                               lineage=lineage, extra={"distill_arm": saved})
        for d in sorted(self.dir.glob(f"{arm}_train*")):
            if d.is_dir() and (d.name == f"{arm}_train" or d.name.startswith(f"{arm}_train_")):
                _remove_trainer_files(d)
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty: files we do not know are left alone
        return path

    @contextlib.contextmanager
    def training(self, arm: str) -> Iterator[None]:
        """Within: every Trainer run of ``train_arm`` checkpoints into this arm's folders."""
        token = _ARM.set(TrainDirs(self.dir, arm, self.fp["key"]))
        try:
            yield
        finally:
            _ARM.reset(token)
