"""Run a recipe: the baseline, then every variant's chain of steps, each step cached.

A step's folder is ``out_dir/steps/<step>-<key>``, where the key hashes the parent's key,
the step's name and its config: two variants that start with the same steps share those
folders (and the work), and a re-run - after a finish, a crash or Ctrl-C - skips every step
whose ``done.json`` is there. ``done.json`` is written last and atomically, so a killed step
has none and runs again (a training inside it resumes from its last epoch). Each measured
row is cached the same way (``eval-<key>.json`` beside the artifact), keyed by the target's
settings too. Then ``results.json`` and the report are written.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from edgeopt._io import write_json_atomic
from edgeopt.recipe.schema import BASELINE_NAME, Recipe, StepSpec
from edgeopt.recipe.steps import STEPS, StepContext, StepOutput, export_artifact

#: bump when a step's files or meaning change, so old caches are not reused
CACHE_VERSION = 1


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _file_sha(path: str | Path) -> str | None:
    from edgeopt._io import file_sha256
    from edgeopt.models.checkpoint import checkpoint_paths

    try:
        return file_sha256(checkpoint_paths(path)[0])
    except OSError:
        return None


def baseline_key(recipe: Recipe) -> str:
    """The baseline's cache key: data, model and training (and the checkpoint's bytes)."""
    b = recipe.baseline
    weights = b.checkpoint or (b.model or {}).get("weights")
    return _hash({"v": CACHE_VERSION, "data": recipe.data.to_dict(), "baseline": b.to_dict(),
                  "weights_sha": _file_sha(weights) if weights else None})


def step_key(parent: str, step: StepSpec) -> str:
    return _hash({"v": CACHE_VERSION, "parent": parent, "step": step.name, "config": step.config_dict()})


def step_dir(out: Path, name: str, key: str) -> Path:
    return out / "steps" / f"{name}-{key}"


def _done(d: Path, key: str) -> dict[str, Any] | None:
    try:
        done = json.loads((d / "done.json").read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("key") == key else None


def plan(recipe: Recipe, out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """What a run would do: per variant, its steps with their key, folder and whether cached.

    Example:
        >>> from edgeopt.recipe import parse_recipe
        >>> r = parse_recipe({"data": {"name": "digits"}, "baseline": {"train": {"epochs": 1}},
        ...                   "variants": {"a": ["quantize"], "b": [{"prune": {}}, "quantize"]}})
        >>> [(p["variant"], [s["step"] for s in p["steps"]]) for p in plan(r, "/nonexistent")]
        [('baseline', ['baseline']), ('a', ['quantize']), ('b', ['prune', 'quantize'])]
    """
    out = Path(out_dir or recipe.out_dir)
    bkey = baseline_key(recipe)
    seen: dict[str, str] = {}
    bdir = step_dir(out, "baseline", bkey)
    rows = [{"variant": BASELINE_NAME, "steps": [{"step": "baseline", "key": bkey, "dir": str(bdir),
                                                  "cached": _done(bdir, bkey) is not None, "shared_with": None}]}]
    for vname, steps in recipe.variants.items():
        parent, items = bkey, []
        for s in steps:
            key = step_key(parent, s)
            d = step_dir(out, s.name, key)
            items.append({"step": s.name, "key": key, "dir": str(d), "cached": _done(d, key) is not None,
                          "shared_with": seen.get(key), "config": s.config_dict()})
            seen.setdefault(key, vname)
            parent = key
        rows.append({"variant": vname, "steps": items})
    return rows


class _Run:
    """One run's state: the data, the loaded models by key, the rows."""

    def __init__(self, recipe: Recipe, out: Path, progress: bool) -> None:
        self.recipe, self.out, self.progress = recipe, out, progress
        self.models: dict[str, Any] = {}
        self.data = None
        self.results: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.figures: list[dict[str, Any]] = []
        self.extras_done: set[str] = set()

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[edgeopt] {msg}", file=sys.stderr, flush=True)

    def load_data(self):
        """The recipe's data, fed as the baseline expects: a `checkpoint:` baseline (trained
        elsewhere, e.g. with ImageNet statistics) brings its own mean/std and class names, and
        every step and measurement must use them, not the dataset's."""
        if self.data is None:
            dm = self.recipe.data.load()
            ckpt = self.recipe.baseline.checkpoint
            if ckpt:
                from edgeopt.artifact import Artifact
                from edgeopt.data import data_for_model

                dm = data_for_model(dm, Artifact.load(ckpt).spec, where=Path(ckpt).name)
            self.data = dm
        return self.data

    # -- models ------------------------------------------------------------------------
    def model(self, key: str, loader: Callable[[], Any]) -> Any:
        if key not in self.models:
            self.models[key] = loader()
        return self.models[key]

    @staticmethod
    def _load(path: Path) -> Any:
        from edgeopt.models import load_checkpoint

        return load_checkpoint(path)[0].eval()

    def baseline(self) -> tuple[str, Callable[[], Any]]:
        """Train or load the baseline (cached); returns its key and a loader of its model."""
        from edgeopt.models import load_checkpoint, save_checkpoint

        r = self.recipe
        key = baseline_key(r)
        d = step_dir(self.out, "baseline", key)
        if _done(d, key):
            self.log(f"baseline: cached ({d})")
            return key, lambda: self._load(d / "model.safetensors")
        t0 = time.perf_counter()
        data = self.load_data()
        b = r.baseline
        if b.checkpoint:
            self.log(f"baseline: loading {b.checkpoint}")
            model, _ = load_checkpoint(b.checkpoint)  # load_data checked its spec against the data
            lineage = list(getattr(model, "edgeopt_lineage", None) or []) or [{"step": "load", "weights": b.checkpoint}]
        else:
            mcfg = b.model_config()
            model = mcfg.build(data.spec)
            lineage = [{"step": "load", "weights": mcfg.weights}] if mcfg.weights else []
            if b.train is not None:
                from edgeopt.train import Trainer

                tcfg = b.train_config().replace(out_dir=str(d / "train"), progress=self.progress,
                                                resume=(d / "train" / "train_state.pt").is_file())
                self.log(f"baseline: training {mcfg.name} on {data.name} for {tcfg.epochs} epochs")
                res = Trainer(tcfg).fit(model, data)
                model, _ = load_checkpoint(res.best_path)
                lineage = lineage + [{"step": "train", "epochs": tcfg.epochs, "best_metric": res.best_metric}]
        model.eval()
        model.edgeopt_lineage = lineage
        save_checkpoint(d / "model", model, lineage=lineage)
        write_json_atomic(d / "done.json", {"key": key, "step": "baseline", "model": "model.safetensors",
                                             "seconds": round(time.perf_counter() - t0, 2)})
        self.models[key] = model
        return key, lambda: model

    # -- steps -------------------------------------------------------------------------
    def step(self, vname: str, i: int, n: int, s: StepSpec, parent_key: str,
             parent: Callable[[], Any], chain_info: dict[str, Any]) -> tuple[str, dict[str, Any], Path]:
        """Run (or reuse) one step; returns its key, its done.json and its folder."""
        from edgeopt.models import save_checkpoint

        key = step_key(parent_key, s)
        d = step_dir(self.out, s.name, key)
        done = _done(d, key)
        where = f"{vname}: step {i + 1}/{n} {s.name}"
        if done:
            self.log(f"{where}: cached ({d.name})")
            return key, done, d
        self.log(f"{where}: running ({d.name})")
        t0 = time.perf_counter()
        d.mkdir(parents=True, exist_ok=True)
        ctx = StepContext(self.load_data(), self.recipe, d, self.progress, lambda m: self.log(f"{where}: {m}"),
                          chain_info)
        out: StepOutput = STEPS.get(s.name).run(ctx, s.config, self.model(parent_key, parent))
        done = {"key": key, "step": s.name, "config": s.config_dict(), "variant": vname,
                "info": out.info, "figures": out.figures, "model": None, "extras": [], "artifacts": []}
        if out.model is not None:
            save_checkpoint(d / "model", out.model, lineage=list(getattr(out.model, "edgeopt_lineage", []) or []))
            done["model"] = "model.safetensors"
            self.models[key] = out.model
        for j, (label, m, xinfo) in enumerate(out.extras):
            save_checkpoint(d / f"extra{j}", m, lineage=list(getattr(m, "edgeopt_lineage", []) or []))
            done["extras"].append({"label": label, "model": f"extra{j}.safetensors", "info": xinfo})
        for label, art, extras in out.artifacts:
            rel = str(Path(art.path).resolve().relative_to(d.resolve()))
            done["artifacts"].append({"label": label, "path": rel, "extras": extras})
        done["seconds"] = round(time.perf_counter() - t0, 2)
        write_json_atomic(d / "done.json", done)  # last: the step is finished
        return key, done, d

    def add_figures(self, step: str, d: Path, figures: list[dict[str, Any]]) -> None:
        """A step's figures, once (variants share steps); int8 histograms of the first
        quantize step only: one set shows what calibration chose, more only lengthen the report."""
        if step == "quantize" and any(f.get("step") == "quantize" for f in self.figures):
            return
        seen = {f["path"] for f in self.figures}
        for f in figures:
            path = str((d / f["path"]).relative_to(self.out))
            if path not in seen:
                self.figures.append({**f, "path": path, "step": step})

    # -- rows --------------------------------------------------------------------------
    def measure(self, name: str, group: str, d: Path, art_path: Path | None, model_key: str,
                model: Callable[[], Any], extras: dict[str, Any], fmt: str | None = None) -> None:
        """Measure one row (or reuse its cached measurement)."""
        from edgeopt.evaluate import evaluate_variant

        t = self.recipe.target
        ekey = _hash({"v": CACHE_VERSION, "name": name, "artifact": str(art_path) if art_path else None,
                      "fmt": fmt, "model": model_key, "target": t.to_dict()})
        cached = d / f"eval-{ekey}.json"
        if cached.is_file():
            try:
                row = json.loads(cached.read_text())
                self.log(f"{name}: measurement cached")
                self.rows.append(row)
                return
            except ValueError:
                pass
        extras = dict(extras)
        lineage = extras.pop("_lineage", None)
        m = self.model(model_key, model)
        if art_path is None and fmt is not None:  # a model exported to the target's formats
            ctx = StepContext(self.load_data(), self.recipe, d, self.progress, lambda x: self.log(f"{name}: {x}"))
            _, art, ex = export_artifact(ctx, m, fmt)
            lineage = ex.pop("_lineage", None)
            extras.update(ex)
            target = art
        elif art_path is None:
            target = m
        else:
            from edgeopt.artifact import Artifact

            target = Artifact.load(art_path)
        if lineage is None:
            lineage = list(getattr(m, "edgeopt_lineage", None) or [])
        self.log(f"measuring {name}")
        row = evaluate_variant(name, target, self.load_data(), model=m, lineage=lineage,
                               runtime="torch" if target is m else None, **t.eval_kwargs(self.progress))
        row.update(extras)
        row["variant_group"] = group
        write_json_atomic(cached, row)
        self.rows.append(row)

    def model_rows(self, group: str, label: str | None, d: Path, key: str, loader: Callable[[], Any],
                   info: dict[str, Any], eager: bool = False) -> None:
        """Rows of a model with no terminal step: eager (``eager``) and each target format."""
        t = self.recipe.target
        prefix = group if label is None else f"{group} ({label})"
        fmts: list[str | None] = ([None] if eager or not t.formats else []) + list(t.formats)
        for fmt in fmts:
            name = f"{prefix} {fmt or 'torch'}" if len(fmts) > 1 or group == BASELINE_NAME else prefix
            self.measure(name, group, d, None, key, loader, dict(info), fmt=fmt)


def run_recipe(recipe: Recipe, *, out_dir: str | Path | None = None, only: list[str] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Run ``recipe`` (or its ``only`` variants) and write results.json and the report.

    Args:
        recipe: a validated :class:`Recipe` (:func:`edgeopt.recipe.load_recipe`).
        out_dir: override ``recipe.out_dir``.
        only: run only these variants (the baseline is always run); results of several
            such runs merge with ``edgeopt report a/results.json b/results.json``.
        progress: progress lines on stderr.

    Returns:
        The results dict (``edgeopt.evaluate.results``), with ``baseline``, ``constraints``,
        ``choice`` and ``recipe``.

    Raises:
        ConfigError: ``out_dir`` is not writable or in use by another run; a step's input
            does not fit (the message names the step).

    Example:
        >>> from edgeopt.recipe import load_recipe, run_recipe
        >>> results = run_recipe(load_recipe("recipes/demo.yaml"))  # doctest: +SKIP
    """
    from edgeopt._outputs import dir_lock, ensure_writable_dir
    from edgeopt.errors import note_interrupt

    if only:
        recipe = recipe.only(only)
    out = ensure_writable_dir(out_dir or recipe.out_dir, "out_dir")
    try:
        with dir_lock(out, "out_dir"):
            return _run(recipe, out, progress)
    except KeyboardInterrupt as exc:
        note_interrupt(exc, f"interrupted: every finished step in {out / 'steps'} is kept; re-run the same "
                            "command to continue from there", override=True)
        raise


def _publish_baseline(run: "_Run", key: str, loader: Callable[[], Any]) -> None:
    """Save the baseline at a stable name, ``out_dir/baseline.safetensors`` (what ``edgeopt
    quantize``, ``prune``... are pointed at), unless it is already this baseline."""
    from edgeopt.models import save_checkpoint

    dst = run.out / "baseline.json"
    try:
        if json.loads(dst.read_text()).get("extra", {}).get("recipe_step") == key:
            return
    except (OSError, ValueError):
        pass
    model = run.model(key, loader)
    save_checkpoint(run.out / "baseline", model, lineage=list(getattr(model, "edgeopt_lineage", []) or []),
                    extra={"recipe_step": key})


def _run(recipe: Recipe, out: Path, progress: bool) -> dict[str, Any]:
    from edgeopt.evaluate import new_results, save_results
    from edgeopt.evaluate.constraints import apply_choice
    from edgeopt.report import write_report

    t0 = time.perf_counter()
    run = _Run(recipe, out, progress)
    bkey, bload = run.baseline()
    bdir = step_dir(out, "baseline", bkey)
    _publish_baseline(run, bkey, bload)
    run.model_rows(BASELINE_NAME, None, bdir, bkey, bload, {}, eager=recipe.target.eager)
    for vname, steps in recipe.variants.items():
        key, loader = bkey, bload
        info: dict[str, Any] = {}
        beside: list[tuple] = []  # models measured after the variant's own rows
        for i, s in enumerate(steps):
            pkey, pload = key, loader  # the model this step starts from
            key, done, d = run.step(vname, i, len(steps), s, key, loader, info)
            info.update(done.get("info") or {})
            run.add_figures(s.name, d, done.get("figures", []))
            for j, ex in enumerate(done.get("extras", [])):
                if f"{key}/extra{j}" in run.extras_done:  # a shared step's extra is measured once
                    continue
                run.extras_done.add(f"{key}/extra{j}")
                beside.append((vname, ex["label"], d, f"{key}/extra{j}",
                               lambda p=d / ex["model"]: run._load(p), ex.get("info") or {}))
            if done.get("model"):
                loader = lambda p=d / done["model"]: run._load(p)  # noqa: E731
            if STEPS.get(s.name).terminal:  # measured with the model it came from (MACs, bytes moved)
                arts = done["artifacts"]
                for a in arts:
                    name = vname if len(arts) == 1 else f"{vname} {a['label']}"
                    run.measure(name, vname, d, d / a["path"], pkey, pload, {**info, **a.get("extras", {})})
        if not STEPS.get(steps[-1].name).terminal:
            run.model_rows(vname, None, step_dir(out, steps[-1].name, key), key, loader, info)
        for args in beside:
            run.model_rows(*args)
    results = new_results(recipe.name, {"recipe": recipe.source, "out_dir": str(out)})
    results["variants"] = run.rows
    results["recipe"] = recipe.raw
    results["baseline"] = run.rows[0]["name"] if run.rows else None
    if run.figures:
        results["figures"] = run.figures
    apply_choice(results, recipe.constraints)
    results["elapsed_s"] = round(time.perf_counter() - t0, 2)
    save_results(out / "results.json", results)
    report = write_report(results, out)
    run.log(f"wrote {out / 'results.json'} and {report} in {results['elapsed_s']:.1f} s")
    return results
