"""What ``edgeopt distill`` runs: a student (zoo name or checkpoint) from a teacher checkpoint.

The CLI only builds a :class:`DistillJob` (:func:`job_config`) and calls :func:`run_job`
(DESIGN habit 7). :func:`distill_checkpoint` checks the output folder and every name before
any work, loads the teacher checkpoint and its dataset with the teacher's own
preprocessing (:func:`edgeopt.jobs.load_data_for`), builds or loads the student, runs
:func:`~edgeopt.distill.distill` (or :func:`~edgeopt.distill.sweep` for a temperature x
alpha grid) and writes into ``out_dir``:

* ``student`` / ``baseline`` checkpoints (safetensors + sidecar, :func:`~edgeopt.distill.save_result`);
* ``distill.json``: config, summary (mean ± std, gain, verdict), per-seed runs, teacher
  accuracy, the command; a sweep also ``sweep.csv``, ``sweep.json``, ``sweep_heatmap.png``;
* ``distill.md``: the same in a few lines of Markdown.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.config import Config
from edgeopt.distill.config import DistillConfig
from edgeopt.errors import ConfigError
from edgeopt.pipeline import DataConfig


@dataclasses.dataclass(frozen=True)
class DistillJob(Config):
    """A distillation run from files: what ``edgeopt distill`` builds and ``--dump-config`` prints.

    Attributes:
        student: a zoo model name (created fresh from the data's spec, under
            ``distill.seed``) or an edgeopt checkpoint path; None: the preset's student.
        teacher: an edgeopt checkpoint path; None only for method ``online``.
        preset: a preset name (:mod:`edgeopt.distill.presets`); its settings are under
            ``distill``'s.
        data: the dataset; None: the one the teacher (else the student checkpoint) records,
            always with the teacher's own preprocessing.
        distill: the :class:`~edgeopt.distill.DistillConfig` (its ``out_dir`` is not used:
            see ``out_dir``).
        temperatures / alphas: more than one value in either: a response-KD sweep over
            ``temperatures x alphas`` (an empty axis takes ``distill``'s value).
        out_dir: where everything is written; None: ``runs/distill/<student>-<method>``.

    Example:
        >>> job = DistillJob(student="cnn_student", teacher="t.safetensors", temperatures=(2.0, 4.0))
        >>> job.is_sweep, job.grid()
        (True, ([2.0, 4.0], [0.9]))
        >>> DistillJob(student="s", distill=DistillConfig(method="dkd"), alphas=(0.5, 0.9))
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: a temperature/alpha sweep grids response KD; method 'dkd' cannot be swept: ...
    """

    student: str | None = None
    teacher: str | None = None
    preset: str | None = None
    data: DataConfig | None = None
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    temperatures: tuple[float, ...] = ()
    alphas: tuple[float, ...] = ()
    out_dir: str | None = None

    def validate(self) -> None:
        if self.preset is not None:
            from edgeopt.distill.presets import get_preset

            get_preset(self.preset)
        if self.student is None and self.preset is None:
            raise ConfigError("no student: give a zoo model name or a checkpoint (STUDENT), or --preset NAME")
        if self.is_sweep and self.distill.method != "response":
            raise ConfigError(
                f"a temperature/alpha sweep grids response KD; method {self.distill.method!r} cannot be "
                f"swept: give one --temperature and one --alpha, or use --method response"
            )
        temps, alphas = self.grid()
        for t in temps:
            for a in alphas:
                self.distill.replace(temperature=t, alpha=a)  # validates each cell now

    @property
    def is_sweep(self) -> bool:
        """More than one temperature or alpha: a sweep."""
        return len(self.temperatures) > 1 or len(self.alphas) > 1

    def grid(self) -> tuple[list[float], list[float]]:
        """The sweep's axes (an empty one takes ``distill``'s value)."""
        return (list(self.temperatures) or [self.distill.temperature],
                list(self.alphas) or [self.distill.alpha])

    @property
    def student_name(self) -> str:
        """The student given, or the preset's."""
        if self.student is not None:
            return self.student
        from edgeopt.distill.presets import get_preset

        return get_preset(self.preset).student


def parse_values(text: str | float | None, what: str) -> list[float] | None:
    """``"4"`` -> ``[4.0]``, ``"2,4,8"`` -> ``[2.0, 4.0, 8.0]``; None stays None.

    Example:
        >>> parse_values("0.3, 0.5", "--alpha")
        [0.3, 0.5]
        >>> parse_values("4,x", "--temperature")
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: --temperature takes a number or comma-separated numbers like 2,4,8, got '4,x'
    """
    if text is None or isinstance(text, (int, float)):
        return None if text is None else [float(text)]
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{what} takes a number or comma-separated numbers like 2,4,8, got {text!r}")
    return values


def parse_pairs(text: str | None) -> list[list[str]] | None:
    """``"block3:block3,block2:block2"`` -> ``[["block3", "block3"], ["block2", "block2"]]``.

    Example:
        >>> parse_pairs("layer3:layer3")
        [['layer3', 'layer3']]
    """
    if text is None:
        return None
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        s, sep, t = item.partition(":")
        if not sep or not s.strip() or not t.strip():
            raise ConfigError(f"--feature-pairs takes student_layer:teacher_layer[,...], got {item!r}")
        pairs.append([s.strip(), t.strip()])
    if not pairs:
        raise ConfigError("--feature-pairs takes student_layer:teacher_layer[,...], got nothing")
    return pairs


def job_config(config_path: str | Path | None = None, *, temperature: str | float | None = None,
               alpha: str | float | None = None, distill: dict[str, Any] | None = None,
               **fields: Any) -> DistillJob:
    """The :class:`DistillJob` of a command line: the ``--config`` file, the preset's settings
    under its ``distill`` values, then the flags given (a flag left at None is not given).

    Args:
        config_path: a YAML/JSON job file (what ``--dump-config`` prints), or None.
        temperature / alpha: one value (sets ``distill``'s) or a comma-separated list (a sweep).
        distill: DistillConfig fields from flags.
        **fields: DistillJob fields (``student``, ``teacher``, ``preset``, ``data``, ``out_dir``).

    Example:
        >>> job = job_config(preset="mnist-cnn", student=None, teacher="t.safetensors",
        ...                  temperature="2,4", distill={"epochs": 3})
        >>> job.student_name, job.temperatures, job.distill.epochs, job.distill.alpha
        ('cnn_student', (2.0, 4.0), 3, 0.9)
    """
    from edgeopt.config import load_mapping
    from edgeopt.distill.presets import preset_config

    def given(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if v is not None}

    d = dict(load_mapping(config_path)) if config_path is not None else {}
    d.update(given(fields))
    values = dict(d.get("distill") or {})
    values.update(given(distill or {}))
    for key, text, axis in (("temperature", temperature, "temperatures"), ("alpha", alpha, "alphas")):
        parsed = parse_values(text, f"--{key}")
        if parsed is not None and len(parsed) == 1:
            values[key], d[axis] = parsed[0], []
        elif parsed is not None:
            d[axis] = parsed
    if not isinstance(d.get("data"), (dict, DataConfig, type(None))):
        raise ConfigError(f"DistillJob.data must be a mapping, got {d['data']!r}")
    d["distill"] = preset_config(d.get("preset"), values)  # an unknown preset: one line
    return DistillJob.from_dict(d)


# -- running ---------------------------------------------------------------------------------
def _is_checkpoint(name: str) -> bool:
    p = Path(name)
    return (p.suffix in (".safetensors", ".json") or p.is_file()
            or Path(f"{name}.safetensors").is_file() or "/" in name)


def _arch(model: nn.Module) -> str:
    arch = getattr(model, "edgeopt_arch", None)
    return arch["name"] if isinstance(arch, dict) and "name" in arch else type(model).__name__


def _load_data(student: Any, teacher: Any, data: Any, resize: bool):
    """The DataModule: given, or the teacher's (else the student checkpoint's) dataset with
    that file's preprocessing."""
    if data is not None and hasattr(data, "loader"):
        return data
    from edgeopt.jobs import load_data_for

    for ref in (teacher, student):
        if isinstance(ref, (str, Path)) and _is_checkpoint(str(ref)):
            return load_data_for(ref, data, resize=resize)
    if data is None or data.name is None:
        raise ConfigError("no data: a fresh student without a teacher checkpoint needs --data NAME")
    return data.load()


def _student_model(student: Any, dm: Any, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    from edgeopt.distill.teacher import check_teacher
    from edgeopt.models import count_parameters, create_model, load_checkpoint

    if isinstance(student, nn.Module):
        model, info = student, {"source": "module"}
    elif _is_checkpoint(str(student)):
        model, _ = load_checkpoint(student)
        try:  # the student was trained with its own preprocessing: it must be the teacher's
            check_teacher(model, dm, what="the student checkpoint")
        except ConfigError:
            s, d = model.edgeopt_spec, dm.spec
            raise ConfigError(
                f"the student checkpoint {student} was trained on {s.dataset or 'other data'} (input "
                f"{tuple(s.input_shape)}, {s.num_classes} classes, mean {tuple(s.mean)} std {tuple(s.std)}) but "
                f"the teacher's data is {dm.name} (input {tuple(d.input_shape)}, {d.num_classes} classes, mean "
                f"{tuple(d.mean)} std {tuple(d.std)}); give a student and a teacher of the same data"
            ) from None
        info = {"source": "checkpoint", "checkpoint": str(student)}
    else:
        with torch.random.fork_rng(devices=[]):  # the same fresh weights on every run of a seed
            torch.manual_seed(seed)
            model = create_model(str(student), dm.spec)
        info = {"source": "zoo", "seed": seed}
    info.update(arch=_arch(model), params=count_parameters(model))
    return model, info


def _check_layers(config: DistillConfig, student: nn.Module, teacher: nn.Module | None) -> None:
    """A wrong ``feature_pairs`` name is one line before any work (the core checks it too, later)."""
    if not config.feature_pairs or teacher is None:
        return
    from edgeopt.distill.features import FeatureHooks

    FeatureHooks(student, [s for s, _ in config.feature_pairs], what="student").remove()
    FeatureHooks(teacher, [t for _, t in config.feature_pairs], what="teacher").remove()


def default_out_dir(student: str, method: str, sweep: bool = False) -> Path:
    """``runs/distill/<student>-<method>`` (``-sweep`` for a sweep)."""
    stem = Path(student).name.removesuffix(".safetensors")
    return Path("runs") / "distill" / f"{stem}-{'sweep' if sweep else method}"


def distill_checkpoint(
    student: str | Path | nn.Module, teacher: str | Path | nn.Module | None, config: DistillConfig,
    out_dir: str | Path, data: Any = None, *, temperatures: list[float] | tuple[float, ...] = (),
    alphas: list[float] | tuple[float, ...] = (), progress: bool = True, command: str | None = None,
    resize: bool = False, job: DistillJob | None = None,
) -> dict[str, Any]:
    """Distil a teacher checkpoint into a student, measure it against the student alone, write it all.

    Args:
        student: a zoo model name (created fresh from the data's spec under ``config.seed``),
            an edgeopt checkpoint path, or a model.
        teacher: an edgeopt checkpoint path (or a model); None for method ``online``.
        config: the :class:`~edgeopt.distill.DistillConfig` (its ``out_dir`` is ignored).
        out_dir: the folder everything is written to (checked before any work).
        data: None (the teacher's dataset, else the student checkpoint's), a
            ``DataConfig`` or a DataModule; always fed with the teacher's preprocessing.
        temperatures / alphas: more than one value in either: a response-KD sweep.
        progress: the Trainer's progress output (stderr).
        command: the command line to record.
        resize: resize data of another image size to the teacher's.
        job: the job config to record (:func:`run_job` passes it).

    Returns:
        What ``distill.json`` holds: ``kind`` (``distill`` or ``sweep``), ``config``,
        ``summary`` (``student_mean``, ``student_std``, ``baseline_mean``, ``baseline_std``,
        ``gain``, ``threshold``, ``verdict``), ``runs``, ``teacher_acc``, ``student``,
        ``teacher``, ``data``, ``command``, ``paths`` (files written), ``warnings``, ``seconds``.

    Raises:
        ConfigError: ``out_dir`` is not a writable folder, no teacher for a method that
            needs one, an unknown model or layer name, a teacher or student that does not
            fit the data (another dataset, classes or normalisation).
        DataError: the data does not fit the teacher.

    Example:
        >>> import tempfile
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model, save_checkpoint
        >>> tmp = tempfile.mkdtemp()
        >>> t = save_checkpoint(f"{tmp}/teacher", create_model("cnn_teacher", get_dataset("digits").spec))
        >>> cfg = DistillConfig(epochs=1, max_steps_per_epoch=2, batch_size=32)
        >>> r = distill_checkpoint("cnn_student", t, cfg, f"{tmp}/kd", progress=False)
        >>> r["summary"]["verdict"] in ("gain", "loss", "no measurable gain"), sorted(r["paths"])
        (True, ['baseline', 'json', 'markdown', 'student'])
    """
    from edgeopt._outputs import dir_lock, ensure_writable_dir
    from edgeopt.models import count_parameters, load_checkpoint

    t0 = time.perf_counter()
    out = ensure_writable_dir(out_dir, "--out-dir")  # before any work
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"distill_checkpoint needs a DistillConfig, got {type(config).__name__}")
    config = config.replace(out_dir=None)  # this layer writes the files
    sweep_grid = len(temperatures) > 1 or len(alphas) > 1
    if sweep_grid and config.method != "response":
        raise ConfigError(f"a temperature/alpha sweep grids response KD, not method {config.method!r}")
    if teacher is None and config.method != "online":
        raise ConfigError(f"method {config.method!r} needs a teacher: --teacher CHECKPOINT (only 'online' "
                          f"trains without one)")
    for what, ref in (("--teacher", teacher), ("the student", student)):
        if isinstance(ref, (str, Path)) and _is_checkpoint(str(ref)) and not (
                Path(ref).exists() or Path(f"{ref}.safetensors").exists()):
            raise ConfigError(f"{what} {ref}: no such checkpoint (an edgeopt .safetensors + .json, e.g. "
                              f"from `edgeopt train`)")
    if isinstance(data, (str, Path)):
        data = DataConfig(name=str(data))
    dm = _load_data(student, teacher, data, resize)
    teacher_info: dict[str, Any] | None = None
    teacher_model = None
    if teacher is not None:
        if isinstance(teacher, nn.Module):
            teacher_model, teacher_info = teacher, {"checkpoint": None}
        else:
            teacher_model = load_checkpoint(teacher)[0]
            teacher_info = {"checkpoint": str(teacher)}
        teacher_info.update(arch=_arch(teacher_model), params=count_parameters(teacher_model))
    student_model, student_info = _student_model(student, dm, config.seed)
    _check_layers(config, student_model, teacher_model)
    data_info = {"name": dm.name, "train": len(dm.train), "val": len(dm.split("val")),
                 "test": len(dm.split("test"))}
    with dir_lock(out, "--out-dir"):
        if sweep_grid:
            return _run_sweep(student_model, teacher_model, config, dm, out, list(temperatures or [config.temperature]),
                              list(alphas or [config.alpha]), progress, command, job, student_info,
                              teacher_info, data_info, t0)
        from edgeopt.distill._base import distill, save_result

        # out_dir: distill() keeps each finished seed and arm there (out/runs/seed{N}), so a killed
        # run resumes; it also writes student/baseline/distill.json, which save_result rewrites
        result = distill(student_model, teacher_model, config.replace(out_dir=str(out)), dm, progress=progress)
        paths = {k: str(v) for k, v in save_result(result, out).items()}
        report = {"kind": "distill", "command": command, "job": job.to_dict() if job is not None else None,
                  **result.to_dict(), "student": student_info,
                  "teacher": dict(teacher_info, test_acc=result.teacher_acc) if teacher_info else None,
                  "data": data_info, "paths": paths}
        return _write_reports(report, out, time.perf_counter() - t0)


def _run_sweep(student, teacher, config, dm, out: Path, temperatures, alphas, progress, command, job,
               student_info, teacher_info, data_info, t0) -> dict[str, Any]:
    from edgeopt.distill.sweep import sweep

    res = sweep(student, teacher, config, dm, temperatures, alphas, progress=progress, out_dir=out)
    best = res.best
    summary = {"temperature": best["temperature"], "alpha": best["alpha"], "seeds": config.seeds,
               **{k: best[k] for k in ("student_mean", "student_std", "baseline_mean", "baseline_std",
                                       "gain", "threshold", "verdict")}}
    if config.seeds == 1 and res.baseline is not None:
        summary["note"] = "one seed: no spread measured; use seeds >= 3 before trusting a gain"
    seeds = [config.seed + k for k in range(config.seeds)]
    runs = [{"temperature": r["temperature"], "alpha": r["alpha"], "seed": s, "test_acc": acc}
            for r in res.rows for s, acc in zip(seeds, r["test_accs"])]
    if res.baseline is not None:
        runs += [{"temperature": None, "alpha": None, "seed": s, "baseline": True, "test_acc": acc}
                 for s, acc in zip(seeds, res.baseline["test_accs"])]
    report = {"kind": "sweep", "command": command, "job": job.to_dict() if job is not None else None,
              "config": config.to_dict(), "teacher_acc": res.teacher_acc, "summary": summary, "runs": runs,
              "sweep": {"temperatures": res.temperatures, "alphas": res.alphas, "rows": res.rows,
                        "baseline": res.baseline},
              "info": res.info, "warnings": [], "student": student_info,
              "teacher": dict(teacher_info, test_acc=res.teacher_acc) if teacher_info else None,
              "data": data_info, "paths": {f"sweep_{k}": str(v) for k, v in res.paths.items()}}
    return _write_reports(report, out, time.perf_counter() - t0)


def _write_reports(report: dict[str, Any], out: Path, seconds: float) -> dict[str, Any]:
    from edgeopt._io import write_json_atomic, write_text_atomic

    report["seconds"] = round(seconds, 3)
    report["paths"]["json"] = str(out / "distill.json")
    report["paths"]["markdown"] = str(out / "distill.md")
    write_text_atomic(out / "distill.md", summary_markdown(report))
    write_json_atomic(out / "distill.json", report)  # last: its presence means the run finished
    return report


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _mean_std(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"


def summary_markdown(report: dict[str, Any]) -> str:
    """A few lines of Markdown: distilled vs baseline (mean ± std), gain, verdict, teacher, files.

    Example:
        >>> s = {"student_mean": 0.91, "student_std": 0.01, "baseline_mean": 0.9, "baseline_std": 0.01,
        ...      "gain": 0.01, "threshold": 0.028, "verdict": "no measurable gain", "seeds": 3}
        >>> md = summary_markdown({"kind": "distill", "summary": s, "config": DistillConfig().to_dict(),
        ...                        "teacher_acc": 0.95, "paths": {}})
        >>> "| student alone (baseline) | 90.00 ± 1.00 |" in md, "verdict: **no measurable gain**" in md
        (True, True)
    """
    s, c = report["summary"], report["config"]
    student = (report.get("student") or {}).get("arch", "student")
    teacher = report.get("teacher") or {}
    method = "response KD sweep" if report["kind"] == "sweep" else f"{c['method']} KD"
    lines = [f"# Distillation: {student} from {teacher.get('arch', 'no teacher')} ({method})", ""]
    if report.get("data"):
        d = report["data"]
        lines += [(f"Data: {d['name']} ({d['train']} train / {d['val']} val / {d['test']} test images); "
                   f"accuracies are top-1 on the test split."), ""]
    seeds = s.get("seeds", c["seeds"])
    if report["kind"] == "sweep":
        lines += ["| temperature | alpha | student top-1 % | gain (points) | verdict |", "|---|---|---|---|---|"]
        for r in report["sweep"]["rows"]:
            gain = "–" if r["gain"] is None else f"{100 * r['gain']:+.2f}"
            lines.append(f"| {r['temperature']:g} | {r['alpha']:g} | {_mean_std(r['student_mean'], r['student_std'])} "
                         f"| {gain} | {r['verdict']} |")
        lines += ["", f"Best cell: temperature {s['temperature']:g}, alpha {s['alpha']:g}.", ""]
    label = f"student, distilled ({c['method']}" + (
        f", T={c['temperature']:g}, alpha={c['alpha']:g})" if c["method"] in ("response", "dkd", "feature") else ")")
    if report["kind"] == "sweep":
        label = f"student, best cell (T={s['temperature']:g}, alpha={s['alpha']:g})"
    lines += [f"| model | test top-1 % (mean ± std over {seeds} seed{'s' if seeds != 1 else ''}) |", "|---|---|",
              f"| {label} | {_mean_std(s['student_mean'], s['student_std'])} |"]
    if s.get("baseline_mean") is not None:
        lines.append(f"| student alone (baseline) | {_mean_std(s['baseline_mean'], s['baseline_std'])} |")
    if report.get("teacher_acc") is not None:
        lines.append(f"| teacher ({teacher.get('arch', '?')}) | {_pct(report['teacher_acc'])} |")
    lines.append("")
    if s.get("gain") is not None:
        lines.append(f"Gain {100 * s['gain']:+.2f} points; threshold (twice the combined spread) "
                     f"{100 * s['threshold']:.2f} points; verdict: **{s['verdict']}**.")
    else:
        lines.append(f"Verdict: **{s['verdict']}** (no baseline trained).")
    if s.get("note"):
        lines.append(f"Note: {s['note']}.")
    lines += ["", f"Budget: {c['epochs']} epoch(s) per model trained, lr {c['lr']:g} ({c['optimizer']}, "
                  f"{c['schedule']}), batch {c['batch_size']}, augmentation {'on' if c['augment'] else 'off'}"
                  + (f", at most {c['max_steps_per_epoch']} steps per epoch" if c.get("max_steps_per_epoch") else "")
                  + f"; seeds {c['seed']}..{c['seed'] + c['seeds'] - 1}; init {c['init']}."]
    if report.get("command"):
        lines += ["", f"Command: `{report['command']}`"]
    files = [Path(p).name for k, p in report.get("paths", {}).items() if k != "markdown"]
    if files:
        lines += ["", "Files: " + ", ".join(files)]
    for w in report.get("warnings") or []:
        lines += ["", f"Warning: {w}"]
    return "\n".join(lines) + "\n"


def run_job(job: DistillJob, *, progress: bool = True, command: str | None = None,
            resize: bool = False) -> dict[str, Any]:
    """Run a :class:`DistillJob` (:func:`distill_checkpoint` with its fields).

    Example:
        >>> import tempfile
        >>> job = DistillJob(student="cnn_student", data=DataConfig(name="digits"), out_dir=tempfile.mkdtemp(),
        ...                  distill=DistillConfig(method="online", epochs=1, max_steps_per_epoch=2, baseline=False))
        >>> run_job(job, progress=False)["summary"]["verdict"]
        'no baseline'
    """
    out = job.out_dir or default_out_dir(job.student_name, job.distill.method, job.is_sweep)
    temps, alphas = (job.grid() if job.is_sweep else ((), ()))
    return distill_checkpoint(job.student_name, job.teacher, job.distill, out, job.data,
                              temperatures=temps, alphas=alphas, progress=progress, command=command,
                              resize=resize, job=job)
