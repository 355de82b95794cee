"""``optimize``: from one checkpoint and a device's constraints to the variant to deploy.

1. build the candidates (:mod:`edgeopt.optimize.candidates`);
2. screen each cheaply: top-1 on a seeded subset of the held-out split, latency from a
   few runs, no memory probe;
3. measure the promising ones fully (the whole split, the normal latency runs, throughput,
   peak memory): those meeting every constraint with some slack, or, when none does, the
   ``fallback`` closest;
4. :func:`~edgeopt.evaluate.constraints.choose` among the fully measured rows, copy the
   chosen artifact to ``out_dir/chosen.<ext>``, write ``results.json`` and the report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from edgeopt.evaluate.constraints import choose, describe_choice, rank_closest
from edgeopt.optimize.candidates import Candidate, build_candidates, one_line
from edgeopt.optimize.config import OptimizeConfig

#: the exit status of ``edgeopt optimize`` when no variant meets the constraints
EXIT_NONE_MEETS = 3


@dataclasses.dataclass
class OptimizeResult:
    """What :func:`optimize` returns.

    Attributes:
        results: the results dict written to ``results.json`` (``baseline``,
            ``constraints``, ``choice``, ``screening``, rows with ``stage``).
        chosen: the chosen variant's name, or None when none meets the constraints.
        chosen_path: ``out_dir/chosen.<ext>`` (its sidecar beside it), or None.
        results_path: ``out_dir/results.json``.
        report_path: ``out_dir/report.md`` (None if the report could not be written).
        message: the choice in one line (``chosen: NAME — meets ...`` or
            ``no variant meets the constraints: ...``).
    """

    results: dict[str, Any]
    chosen: str | None
    chosen_path: Path | None
    results_path: Path
    report_path: Path | None
    message: str

    @property
    def exit_code(self) -> int:
        """0 when a variant was chosen, :data:`EXIT_NONE_MEETS` (3) when none meets."""
        return 0 if self.chosen is not None else EXIT_NONE_MEETS

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "chosen_path": None if self.chosen_path is None else str(self.chosen_path),
                "results": str(self.results_path), "report": None if self.report_path is None else str(self.report_path),
                "message": self.message, "choice": self.results.get("choice"),
                "constraints": self.results.get("constraints")}


class _Say:
    """One progress line on stderr (rich), when ``progress``."""

    def __init__(self, progress: bool) -> None:
        self.console = None
        if progress:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    def __call__(self, tag: str, msg: str) -> None:
        if self.console is not None:
            from rich.markup import escape

            self.console.print(f"[bold]{escape('[' + tag + ']')}[/] {escape(msg)}", soft_wrap=True)


def optimize(checkpoint: str | Path, config: OptimizeConfig, data: Any = None, progress: bool = True) -> OptimizeResult:
    """Build candidates from a checkpoint, measure them, and choose the one meeting the constraints.

    Args:
        checkpoint: an edgeopt checkpoint (``.safetensors`` + ``.json``, as ``edgeopt train`` writes).
        config: the :class:`OptimizeConfig` (constraints, candidates, measurement).
        data: a DataModule or a ``DataConfig`` overriding ``config.data``; None: the dataset
            the checkpoint records. Always fed with the checkpoint's own preprocessing.
        progress: progress lines on stderr.

    Returns:
        An :class:`OptimizeResult`; its ``exit_code`` is 0 when a variant was chosen, 3 when
        none meets the constraints.

    Raises:
        ConfigError: ``out_dir`` cannot be written or another run holds it; a teacher with
            another ModelSpec.
        ModelLoadError: the checkpoint or the teacher cannot be loaded.
        DataError: the data does not fit the model.

    Example:
        >>> from edgeopt.evaluate import Constraints
        >>> cfg = OptimizeConfig(constraints=Constraints(max_latency_ms=2.0, min_accuracy=0.95),
        ...                      out_dir="runs/opt", budget="quick")
        >>> res = optimize("runs/demo/baseline.safetensors", cfg)  # doctest: +SKIP
        >>> res.message  # doctest: +SKIP
        'chosen: int8 onnxruntime — meets max_latency_ms (0.0512 ms <= 2.0) and min_accuracy (97.5 % >= 95.0 %)'
    """
    from edgeopt._outputs import dir_lock, ensure_writable_dir
    from edgeopt.models import load_checkpoint

    cfg, checkpoint = config, Path(checkpoint)
    out = ensure_writable_dir(cfg.out_dir, "out_dir")  # a bad folder fails before any work
    model, meta = load_checkpoint(checkpoint)  # so do the model, the teacher and the data
    teacher = None
    if cfg.teacher is not None and cfg.prune_ratios:  # weights through safetensors, never pickle
        from edgeopt.prune.recovery import check_same_spec

        teacher, _ = load_checkpoint(cfg.teacher)
        check_same_spec(model, teacher)
    dm = _load_data(checkpoint, cfg, data, model.edgeopt_spec)
    with dir_lock(out, "out_dir"):
        lineage = list(meta.get("lineage") or [{"step": "load", "checkpoint": checkpoint.name}])
        return _optimize(checkpoint, cfg, model, lineage, teacher, dm, progress, out)


def _load_data(checkpoint: Path, cfg: OptimizeConfig, data: Any, spec: Any) -> Any:
    from edgeopt.jobs import load_data_for

    if data is not None and hasattr(data, "loader") and hasattr(data, "spec"):  # a DataModule
        from edgeopt.data import data_for_model

        return data_for_model(data, spec, where=checkpoint.name, resize=cfg.resize)
    return load_data_for(checkpoint, data if data is not None else cfg.data, resize=cfg.resize)


def _screen_subset(dm: Any, cfg: OptimizeConfig) -> tuple[Any, int, int]:
    """``(DataModule whose held-out split is a seeded subset, its size, the split's size)``."""
    import torch

    from edgeopt.data import DataModule

    split = dm.split(cfg.split)
    n_all = len(split)
    if cfg.screen_samples >= n_all:
        return dm, n_all, n_all
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(n_all, generator=g)[: cfg.screen_samples].sort().values
    parts = {"train": dm.train, "val": dm.val, "test": dm.test, cfg.split: split.subset(idx)}
    sub = DataModule(dm.name, dm.spec, parts["train"], parts["val"], parts["test"], augment=dm.augment,
                     source=dm.source, resize_to=dm.resize_to)
    return sub, cfg.screen_samples, n_all


def _failed_row(c: Candidate, note: str) -> dict[str, Any]:
    from edgeopt.evaluate import new_variant

    path = getattr(c.target, "path", c.target)
    return new_variant(c.name, artifact=None if path is None else str(path), lineage=list(c.lineage),
                       notes=[note])


def _measure(c: Candidate, dm: Any, cfg: OptimizeConfig, *, full: bool, progress: bool) -> dict[str, Any]:
    from edgeopt.evaluate import evaluate_variant

    row = evaluate_variant(
        c.name, c.target, dm, model=c.model, runtime=c.runtime, threads=cfg.threads,
        latency_runs=cfg.latency_runs if full else cfg.screen_latency_runs, latency_warmup=cfg.warmup,
        throughput_batch=cfg.throughput_batch if full else 0, memory=cfg.memory and full,
        split=cfg.split, lineage=list(c.lineage), progress=progress,
    )
    row.update(c.extra)
    row["stage"] = "full" if full else "screen"
    return row


def _pct(row: dict[str, Any]) -> str:
    acc = row.get("accuracy") or {}
    lat = ((row.get("latency") or {}).get("batch1") or {})
    size = row.get("size") or {}
    parts = [f"top-1 {100 * acc['top1']:.2f} % ({acc.get('n')} images)" if acc else "top-1 not measured",
             f"median {lat['median_ms']:.3f} ms" if lat else "latency not measured"]
    if size:
        parts.append(f"{size['bytes'] / 1e6:.3f} MB")
    return ", ".join(parts)


def _optimize(checkpoint: Path, cfg: OptimizeConfig, model: Any, lineage: list[Any], teacher: Any, dm: Any,
              progress: bool, out: Path) -> OptimizeResult:
    """The body of :func:`optimize`, with ``out`` locked."""
    from edgeopt.evaluate import new_results, save_results

    t0 = time.perf_counter()
    say = _Say(progress)
    screen_dm, n_screen, n_all = _screen_subset(dm, cfg)
    results = new_results(f"optimize {checkpoint.name}", cfg.to_dict())
    results["checkpoint"] = str(checkpoint)

    # stage 1: build and screen each candidate
    cands: dict[str, Candidate] = {}
    for c in build_candidates(model, lineage, dm, cfg, out / "artifacts", teacher=teacher,
                              log=lambda msg: say("optimize", msg)):
        cands[c.name] = c
        if c.error is not None:
            row = _failed_row(c, f"not built: {c.error}")
            row["stage"] = "screen"
        else:
            try:
                row = _measure(c, screen_dm, cfg, full=False, progress=False)
            except Exception as exc:  # noqa: BLE001 - e.g. a runtime that cannot load it: a note
                row = _failed_row(c, f"not measured: {one_line(exc)}")
                row["stage"] = "screen"
                c.error = one_line(exc)
        row["screen"] = {"samples": n_screen, "latency_runs": cfg.screen_latency_runs}
        results["variants"].append(row)
        say("screen", f"{c.name}: " + (_pct(row) if c.error is None else row["notes"][-1]))
    ok = [r for r in results["variants"] if cands[r["name"]].error is None]
    results["baseline"] = (ok or results["variants"])[0]["name"]

    # stage 2: the promising ones, fully
    promising, fallback = _promising(results, ok, cfg)
    results["screening"] = {
        "samples": n_screen, "of": n_all, "split": cfg.split, "latency_runs": cfg.screen_latency_runs,
        "latency_slack": cfg.latency_slack, "accuracy_slack_points": cfg.accuracy_slack,
        "promising": promising, "fallback": fallback,
    }
    say("screen", (f"none meets the constraints with slack; fully measuring the {len(promising)} closest: "
                   if fallback else "promising (meet every constraint with slack): ") + ", ".join(promising))
    index = {r["name"]: i for i, r in enumerate(results["variants"])}
    for name in promising:
        screen_row = results["variants"][index[name]]
        say("full", f"measuring {name} on all {n_all} {cfg.split} images")
        try:
            row = _measure(cands[name], dm, cfg, full=True, progress=progress)
        except Exception as exc:  # noqa: BLE001 - the screened row stays, with a note
            screen_row["notes"].append(f"full measurement failed: {one_line(exc)}")
            continue
        row["screen"] = {"samples": n_screen, "latency_runs": cfg.screen_latency_runs,
                         "top1": (screen_row.get("accuracy") or {}).get("top1"),
                         "median_ms": ((screen_row.get("latency") or {}).get("batch1") or {}).get("median_ms")}
        results["variants"][index[name]] = row
    for r in results["variants"]:
        if r["stage"] == "screen" and cands[r["name"]].error is None:
            r["notes"].append(f"screened only: top-1 on {n_screen} of {n_all} {cfg.split} images, latency from "
                              f"{cfg.screen_latency_runs} runs, no memory probe")

    # the choice, among the fully measured rows
    full = [r for r in results["variants"] if r["stage"] == "full"]
    results["constraints"] = cfg.constraints.to_dict()
    results["choice"] = choose({"baseline": results["baseline"], "variants": full}, cfg.constraints)
    if not full:
        results["choice"]["reason"] = "no candidate could be fully measured (see the rows' notes); " + \
            results["choice"]["reason"]
    chosen = results["choice"]["chosen"]
    chosen_path = _keep_chosen(out, results, chosen)
    results["chosen_artifact"] = None if chosen_path is None else chosen_path.name
    results["elapsed_s"] = round(time.perf_counter() - t0, 2)
    results_path = save_results(out / "results.json", results)
    report = _report(results, out)
    message = describe_choice(results)
    say("optimize", f"wrote {results_path}" + (f" and {report}" if report else "")
        + f" in {results['elapsed_s']:.1f} s")
    return OptimizeResult(results, chosen, chosen_path, results_path, report, message)


def _promising(results: dict[str, Any], ok: list[dict[str, Any]], cfg: OptimizeConfig) -> tuple[list[str], bool]:
    """The names to measure fully, and whether they are the fallback (none met with slack)."""
    screened = {"baseline": results["baseline"], "variants": ok}
    names = choose(screened, cfg.screen_constraints())["meets"]
    fallback = not names
    if fallback:
        bounds = cfg.constraints.replace(max_memory_mb=None)  # memory is not screened
        names = rank_closest(screened, bounds)[: cfg.fallback]
        # and, per failing bound, the candidate closest to meeting it: the report's "closest"
        # must name it after the full measurement, not the nearest of the overall closest
        for f in choose(screened, bounds)["failures"]:
            if f.get("closest") and f["closest"] not in names:
                names.append(f["closest"])
    if cfg.constraints.max_drop is not None and ok and results["baseline"] not in names:
        names = [results["baseline"]] + names  # the drop of the full rows is against its full top-1
    return names, fallback


def _keep_chosen(out: Path, results: dict[str, Any], chosen: str | None) -> Path | None:
    """Copy the chosen artifact (and its sidecar) to ``out/chosen.<ext>``; a stale one goes."""
    from edgeopt._io import write_json_atomic, write_with_atomic
    from edgeopt.artifact import artifact_files, sidecar_path

    for old in out.glob("chosen.*"):  # an earlier run's choice must not look like this one's
        if old.is_file():
            old.unlink()
        elif old.is_dir():
            shutil.rmtree(old)
    if chosen is None:
        return None
    row = next(r for r in results["variants"] if r["name"] == chosen)
    if not row.get("artifact"):
        return None
    src = Path(row["artifact"])

    def copy(a: Path, b: Path) -> Path:
        if a.is_dir():
            shutil.copytree(a, b)
            return b
        return write_with_atomic(b, lambda tmp: shutil.copyfile(a, tmp))

    if src.name.endswith(".safetensors"):  # a checkpoint: NAME.safetensors + NAME.json
        dest = copy(src, out / "chosen.safetensors")
        if src.with_suffix(".json").is_file():
            copy(src.with_suffix(".json"), out / "chosen.json")
    else:
        dest = out / f"chosen{src.suffix}"
        for f in artifact_files(src):  # the file and its companions (an OpenVINO .bin)
            if f.exists():
                copy(f, out / f"chosen{f.suffix}")
    side = sidecar_path(src)
    if side.is_file():  # the sidecar names the file it describes
        meta = json.loads(side.read_text(encoding="utf-8"))
        meta["file"] = dest.name
        write_json_atomic(sidecar_path(dest), meta)
    return dest


def _report(results: dict[str, Any], out: Path) -> Path | None:
    """Write the report; a failure there is a warning (results.json is already written)."""
    from edgeopt.report import write_report

    try:
        return write_report(results, out)
    except Exception as exc:  # noqa: BLE001 - results.json is written already
        import warnings

        from edgeopt.errors import EdgeoptWarning

        warnings.warn(f"the report was not written ({one_line(exc)}); results.json is complete",
                      EdgeoptWarning, stacklevel=2)
        return None
