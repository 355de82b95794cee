""":func:`distill`, the one entry point, its result, and the seed summary (gain and verdict)."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.distill._resume import ArmStore, data_fingerprint, fingerprint
from edgeopt.distill._run import ArmRun, accuracy, device_of, reinit, train_arm
from edgeopt.distill.config import DistillConfig
from edgeopt.distill.methods import DISTILL_METHODS
from edgeopt.distill.teacher import check_teacher, frozen_teacher
from edgeopt.errors import ConfigError, DataError
from edgeopt.spec import SPEC_ATTR

#: the verdicts :func:`summarize` gives
VERDICTS = ("gain", "loss", "no measurable gain", "no baseline")


def summarize(student_accs: Sequence[float], baseline_accs: Sequence[float] | None = None) -> dict[str, Any]:
    """Mean and spread of the distilled and baseline test accuracies, the gain and a verdict.

    ``std`` is the sample standard deviation over seeds (0 for one seed); ``gain`` is
    ``student_mean - baseline_mean``; the threshold is twice the combined spread
    ``sqrt(student_std^2 + baseline_std^2)``, or 0 with one seed (no spread measured). The
    verdict is ``gain`` when ``gain > threshold``, ``loss`` when ``gain < -threshold``,
    otherwise ``no measurable gain``; never a win inside the noise.

    Example:
        >>> s = summarize([0.90, 0.92, 0.94], [0.88, 0.90, 0.92])
        >>> round(s["gain"], 4), round(s["threshold"], 4), s["verdict"]
        (0.02, 0.0566, 'no measurable gain')
        >>> summarize([0.95], [0.90])["verdict"]
        'gain'
    """
    def mean_std(v: Sequence[float]) -> tuple[float, float]:
        v = [float(a) for a in v]
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    s_mean, s_std = mean_std(student_accs)
    out: dict[str, Any] = {"seeds": len(student_accs), "student_mean": s_mean, "student_std": s_std,
                           "baseline_mean": None, "baseline_std": None, "gain": None,
                           "threshold": None, "verdict": "no baseline"}
    if not baseline_accs:
        return out
    b_mean, b_std = mean_std(baseline_accs)
    gain = s_mean - b_mean
    threshold = 2.0 * math.sqrt(s_std**2 + b_std**2) if len(student_accs) > 1 else 0.0
    verdict = "gain" if gain > threshold else "loss" if gain < -threshold else "no measurable gain"
    out.update(baseline_mean=b_mean, baseline_std=b_std, gain=gain, threshold=threshold, verdict=verdict)
    if len(student_accs) == 1:
        out["note"] = "one seed: no spread measured; use seeds >= 3 before trusting a gain"
    return out


@dataclasses.dataclass
class DistillResult:
    """What :func:`distill` returns.

    Attributes:
        model: the distilled student of the first seed (its best epoch by val accuracy),
            in eval mode, on the student's device; a new object.
        baseline_model: the same student trained without a teacher (first seed), or None.
        runs: one dict per seed: ``{"seed", "student": {...}, "baseline": {...} | None}``,
            each arm ``{"test_acc", "val_acc", "best_epoch", "history", ...}`` plus the
            method's details (``links``, ``generations``, ``peers``, ``feature_pairs``).
        summary: :func:`summarize` of the test accuracies: ``student_mean``,
            ``student_std``, ``baseline_mean``, ``baseline_std``, ``gain``, ``threshold``,
            ``verdict``.
        teacher_acc: the teacher's test accuracy (None for ``online`` without a teacher).
        config: the config used.
        info: ``teacher_cache`` (on, or why off), ``teacher_forwards`` and method details.
        warnings: one-line warnings.
        seconds: wall time.
    """

    model: nn.Module
    baseline_model: nn.Module | None
    runs: list[dict[str, Any]]
    summary: dict[str, Any]
    teacher_acc: float | None
    config: DistillConfig
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no models)."""
        return {"config": self.config.to_dict(), "teacher_acc": self.teacher_acc,
                "summary": dict(self.summary), "runs": copy.deepcopy(self.runs),
                "info": dict(self.info), "warnings": list(self.warnings), "seconds": self.seconds}


def _check_inputs(student: nn.Module, teacher: nn.Module | None, config: DistillConfig, data: Any) -> None:
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"distill needs a DistillConfig, got {type(config).__name__}")
    if data is None or not hasattr(data, "loader"):
        raise ConfigError("distill trains on the train split and measures on val/test: "
                          "pass data (a DataModule)")
    if not isinstance(student, nn.Module):
        raise ConfigError(f"the student must be a torch.nn.Module, got {type(student).__name__}")
    if len(data.split("test")) == 0:
        raise DataError(f"dataset '{getattr(data, 'name', '?')}' has no test images; distill reports "
                        f"held-out test accuracy")
    if teacher is None and config.method != "online":
        raise ConfigError(f"DistillConfig.method={config.method!r} needs a teacher (only 'online' "
                          f"trains without one)")
    if teacher is not None:
        check_teacher(teacher, data, student)
    elif getattr(student, SPEC_ATTR, None) is None:  # online: at least the student must fit
        check_teacher(student, data, what="the student")
    if config.method == "progressive":
        from edgeopt.models import create_model

        with torch.random.fork_rng(devices=[]):  # check the names before any training
            for name in config.assistants:
                create_model(name, data.spec)
    if config.out_dir:
        from edgeopt._outputs import ensure_writable_dir

        ensure_writable_dir(config.out_dir, "DistillConfig.out_dir")


def distill(student: nn.Module, teacher: nn.Module | None, config: DistillConfig | None = None,
            data: Any = None, progress: bool = True) -> DistillResult:
    """Distil ``teacher`` into a copy of ``student`` and measure it against a baseline.

    For each seed (``seed .. seed + seeds - 1``) the student starts from the same weights
    (``config.init``) in both arms: the distilled arm by ``config.method``, the baseline
    (``baseline=True``) with cross-entropy alone, with the same data, epochs, augmentation
    and seed. Each arm keeps its best epoch by val accuracy and is measured on the test
    split. The teacher is a frozen copy: eval mode throughout, ``requires_grad=False``,
    forwards under ``torch.no_grad()``. The inputs are not changed.

    Args:
        student: the student; carries the data's ModelSpec (``create_model`` attaches it).
        teacher: the trained teacher, with the same input shape, classes and normalisation
            as the data; None for ``online``.
        config: the :class:`DistillConfig` (default: response KD, T=4, alpha=0.9).
        data: the DataModule (train to train, val to choose the best epoch, test to report).
        progress: the Trainer's progress output.

    With ``config.out_dir`` a long run resumes: each arm of each seed is saved to
    ``out_dir/runs/seed{N}/`` as soon as it finishes, with a fingerprint of the config (less
    ``out_dir``, ``threads``, ``seed``, ``seeds``, ``baseline``), the seed's starting weights,
    the teacher's weights and the data; a re-run reuses the arms of the same fingerprint
    and trains the others, each from the Trainer's last finished epoch when it was killed
    mid-way (see :mod:`edgeopt.distill._resume`).

    Returns:
        A :class:`DistillResult`; with ``out_dir``, ``student``/``baseline`` checkpoints and
        ``distill.json`` are written there (atomically), beside ``runs/``.

    Raises:
        ConfigError: a teacher or student that does not fit the data, a missing teacher,
            an unknown layer or assistant name, an unwritable ``out_dir``.
        DataError: the data has no test split.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> teacher = create_model("simple_cnn", data.spec)
        >>> student = create_model("simple_cnn", data.spec, dropout=0.0)
        >>> cfg = DistillConfig(epochs=1, max_steps_per_epoch=3, batch_size=32)
        >>> r = distill(student, teacher, cfg, data, progress=False)
        >>> sorted(r.summary)[:4], r.model is student
        (['baseline_mean', 'baseline_std', 'gain', 'note'], False)
    """
    config = config or DistillConfig()
    t0 = time.perf_counter()
    _check_inputs(student, teacher, config, data)
    method = DISTILL_METHODS.get(config.method)
    home = device_of(student)
    warnings: list[str] = []
    teacher_acc = accuracy(frozen_teacher(teacher), data, "test") if teacher is not None else None
    if teacher is not None and config.method == "online":
        warnings.append("method 'online' trains peers without a teacher; the teacher given is only measured")
    ctx: dict[str, Any] = {"info": {}}
    runs: list[dict[str, Any]] = []
    first: tuple[ArmRun, ArmRun | None] | None = None
    data_fp = data_fingerprint(data) if config.out_dir else None
    reused: list[str] = []
    for k in range(config.seeds):
        seed = config.seed + k
        start = student if config.init == "given" else reinit(student, seed)
        store = ArmStore(config.out_dir, seed, fingerprint(config, start, teacher, data_fp, seed)) \
            if config.out_dir else None

        def train_distilled(model: nn.Module, seed: int = seed) -> ArmRun:
            return method(model, teacher, config, data, seed, progress, ctx)

        def train_baseline(model: nn.Module, seed: int = seed) -> ArmRun:
            return train_arm(model, config, data, seed, None, progress, "baseline (no teacher)")

        arm = _run_arm("student", train_distilled, start, store, k == 0, progress, ctx, reused, config)
        base = (_run_arm("baseline", train_baseline, start, store, k == 0, progress, ctx, reused, config)
                if config.baseline else None)
        runs.append({"seed": seed, "student": arm.record(),
                     "baseline": base.record() if base is not None else None})
        if first is None:
            first = (arm, base)
    summary = summarize([r["student"]["test_acc"] for r in runs],
                        [r["baseline"]["test_acc"] for r in runs] if config.baseline else None)
    if teacher_acc is not None and config.baseline and teacher_acc < summary["baseline_mean"]:
        warnings.append(f"the teacher ({teacher_acc:.4f}) is less accurate on test than the student "
                        f"trained alone ({summary['baseline_mean']:.4f}); train the teacher longer")
    info = dict(ctx["info"])
    info["init"] = config.init
    if config.out_dir:
        info["reused_arms"] = reused
    arm, base = first
    result = DistillResult(
        model=arm.model.to(home).eval(),
        baseline_model=base.model.to(home).eval() if base is not None else None,
        runs=runs, summary=summary, teacher_acc=teacher_acc, config=config, info=info,
        warnings=warnings, seconds=time.perf_counter() - t0,
    )
    if config.out_dir:
        save_result(result, config.out_dir)
    return result


def _run_arm(name: str, train: Any, start: nn.Module, store: ArmStore | None, need_model: bool,
             progress: bool, ctx: dict[str, Any], reused: list[str], config: DistillConfig) -> ArmRun:
    """Train one arm from a copy of ``start``, or reuse it from ``store`` when it finished
    under the same fingerprint; a trained arm is saved to ``store`` at once. Without a
    store: train. The model of a reused arm is loaded only when ``need_model`` (first seed)."""
    seed = store.fp["seed"] if store is not None else None
    saved = store.load(name) if store is not None else None
    if saved is not None:
        if progress:
            print(f"distill: seed {seed} {name}: reused from {store.path(name)}", file=sys.stderr, flush=True)
        reused.append(f"seed {seed} {name}")
        for key, value in (saved.get("info") or {}).items():
            ctx["info"].setdefault(key, value)
        record = dict(saved["record"])
        model = store.load_model(name, copy.deepcopy(start)) if need_model else start
        core = {k: record.pop(k) for k in ("test_acc", "val_acc", "history", "best_epoch")}
        return ArmRun(model=model, extra=record, **core)
    if store is None:
        return train(copy.deepcopy(start))
    t0 = time.perf_counter()
    with store.training(name):
        run = train(copy.deepcopy(start))
    step = ({"step": "distill", "arm": name, "method": config.method, "seed": seed}
            if name == "student" else {"step": "train", "arm": "distill baseline", "seed": seed})
    store.save(name, run.model, run.record(), time.perf_counter() - t0,
               dict(ctx["info"]) if name == "student" else None, step)
    return run


def save_result(result: DistillResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``student`` (and ``baseline``) checkpoints and ``distill.json`` to ``out_dir``.

    Returns:
        ``{"student", "baseline", "json"}`` -> path (``baseline`` only when trained).
    """
    from edgeopt._io import write_json_atomic
    from edgeopt.models import save_checkpoint

    out = Path(out_dir)
    step = {"step": "distill", "method": result.config.method, "teacher_acc": result.teacher_acc,
            "temperature": result.config.temperature, "alpha": result.config.alpha}
    paths: dict[str, Path] = {}
    first = result.runs[0]
    for name, model in (("student", result.model), ("baseline", result.baseline_model)):
        if model is None:
            continue
        arm = first[name]
        lineage = list(getattr(model, "edgeopt_lineage", None) or []) + [
            dict(step, arm=name) if name == "student" else {"step": "train", "arm": "distill baseline"}]
        paths[name] = save_checkpoint(out / name, model, history=arm["history"],
                                      metrics={"test_acc": arm["test_acc"], "val_acc": arm["val_acc"]},
                                      lineage=lineage)
    paths["json"] = write_json_atomic(out / "distill.json", result.to_dict())
    return paths
