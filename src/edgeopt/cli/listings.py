"""``edgeopt models | datasets | runtimes | formats | presets | steps``: what is registered and installed here."""

from __future__ import annotations

from edgeopt.cli._common import emit_json, print_table
from edgeopt.cli.app import JsonOpt, app


# ---------------------------------------------------------------------------------- listings
@app.command()
def models(json_out: JsonOpt = False) -> None:
    """List the model zoo (also: any torchvision model as tv:NAME, your own as package.module:factory)."""
    from edgeopt.models import describe_models

    rows = describe_models()
    if json_out:
        emit_json(rows)
        return
    print_table("models (parameters at 10 classes, 3x32x32)", ["name", "params", "fp32 MB", "description"],
                [[r["name"], f"{r['params']:,}", f"{r['fp32_mb']:.2f}", r.get("help", "")] for r in rows])


@app.command()
def datasets(json_out: JsonOpt = False) -> None:
    """List the datasets and where each is read from."""
    from edgeopt.data import DATASETS

    _list_registry(DATASETS, "datasets", "name", json_out)


@app.command()
def runtimes(json_out: JsonOpt = False) -> None:
    """List the inference runtimes, whether each is installed, and its version."""
    from edgeopt.runtime import runtime_versions

    vers = runtime_versions()
    rows = [{"runtime": k, "installed": v is not None, "version": v} for k, v in vers.items()]
    if json_out:
        emit_json(rows)
        return
    print_table("runtimes", ["runtime", "installed", "version"],
                [[r["runtime"], "yes" if r["installed"] else "no", r["version"] or "–"] for r in rows])


@app.command()
def formats(json_out: JsonOpt = False) -> None:
    """List the export formats."""
    from edgeopt.export import EXPORTERS

    _list_registry(EXPORTERS, "export formats", "format", json_out)


def _list_registry(registry, title: str, key: str, json_out: bool) -> None:
    rows = [{key: n, "description": registry.help(n)} for n in registry.names()]
    if json_out:
        emit_json(rows)
        return
    print_table(title, [key, "description"], [[r[key], r["description"]] for r in rows])


@app.command()
def presets(json_out: JsonOpt = False) -> None:
    """List the distillation presets (`edgeopt distill --preset NAME`): pair, data, settings, sources."""
    from edgeopt.distill.presets import PRESETS

    rows = [PRESETS.get(n).to_dict() for n in PRESETS.names()]
    if json_out:
        emit_json(rows)
        return
    keys = ("temperature", "alpha", "epochs", "lr", "batch_size", "augment")
    print_table("distillation presets (train the teacher first: edgeopt train --model TEACHER --data DATA)",
                ["name", "teacher -> student", "data", "settings"],
                [[r["name"], f"{r['teacher']} -> {r['student']}", r["data"],
                  ", ".join(f"{k} {r['settings'][k]}" for k in keys if k in r["settings"])] for r in rows])
    for r in rows:
        print(f"{r['name']}: " + "; ".join(r["sources"]))


@app.command()
def steps(json_out: JsonOpt = False) -> None:
    """List the steps a recipe's variants chain (edgeopt run; docs/recipes.md)."""
    from edgeopt.recipe import STEPS

    _list_registry(STEPS, "recipe steps", "step", json_out)
