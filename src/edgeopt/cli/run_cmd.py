"""``edgeopt run RECIPE`` and ``edgeopt demo``: a recipe from baseline to the report (edgeopt.recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgeopt.cli._common import emit_json
from edgeopt.cli.app import DataOpt, DataRootOpt, JsonOpt, TrustOpt, _show_variants, _trust, app


def _finish(results: dict[str, Any], title: str, out: Path, json_out: bool) -> None:
    if json_out:
        emit_json(results)
        return
    _show_variants(results["variants"], False, title=title)
    choice = results.get("choice") or {}
    if choice.get("reason"):
        print(("chosen: " if choice.get("chosen") else "") + choice["reason"])
    print(f"report: {out / 'report.html'} (and report.md)  results: {out / 'results.json'}")


def _print_plan(r: Any, out_dir: str | None, json_out: bool) -> None:
    from edgeopt.recipe import plan

    p = plan(r, out_dir)
    if json_out:
        emit_json(p)
        return
    print(f"recipe {r.source}: {len(r.variants)} variant(s), out_dir {out_dir or r.out_dir}")
    for v in p:
        print(f"  {v['variant']}")
        for s in v["steps"]:
            state = "cached" if s["cached"] else ("shared with " + s["shared_with"] if s["shared_with"] else "to run")
            print(f"    {s['step']:<10} {s['key']}  {state}")


@app.command("run")
def run_cmd(
    recipe: Annotated[str, typer.Argument(help="A recipe file (YAML), or the name of a shipped one: demo, workshop, workshop-fmnist, week2, edge-ai, labs-resnet-int8, labs-mnist-distill (see recipes/ and docs/recipes.md).")],
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Run only this variant (repeatable); the baseline always runs. Merge split runs with `edgeopt report a/results.json b/results.json`.")] = None,
    out_dir: Annotated[Optional[str], typer.Option(help="Override the recipe's out_dir.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the recipe, print the plan (each variant's steps: cached, to run, or shared with another variant) and exit.")] = False,
    trust_model_code: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a recipe: train or load the baseline, run every variant's chain of steps (prune, scan, finetune,
    distill, train, quantize, export; `edgeopt steps`), measure each artifact, choose the best variant under the
    recipe's constraints, and write results.json, report.md and report.html.

    Every finished step is cached under OUT_DIR/steps by a hash of its inputs and config: running the same
    command again (after a crash, Ctrl-C or a change to one variant) redoes only what changed. Variants that
    start with the same steps share them."""
    from edgeopt.recipe import load_recipe, run_recipe

    _trust(trust_model_code)
    r = load_recipe(recipe)
    if only:
        r = r.only(only)
    if dry_run:
        _print_plan(r, out_dir, json_out)
        return
    results = run_recipe(r, out_dir=out_dir, progress=not json_out)
    _finish(results, f"edgeopt run {r.name}", Path(out_dir or r.out_dir), json_out)


@app.command()
def demo(
    out_dir: Annotated[Optional[str], typer.Option(help="Where results.json and the report go (default runs/demo).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    model: Annotated[Optional[str], typer.Option(help="Model to train (default simple_cnn).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs of the baseline.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Inference threads for the measurements.")] = None,
    latency_runs: Annotated[Optional[int], typer.Option(help="Timed latency runs per variant.")] = None,
    trust_model_code: TrustOpt = False,
    config: Annotated[Optional[Path], typer.Option("--config", help="A recipe to run instead of the shipped demo (recipes/demo.yaml); the flags override it.")] = None,
    dump: Annotated[bool, typer.Option("--dump-config", help="Print the recipe this command would run (YAML) and exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The main job (the shipped recipe `demo`): train a baseline on digits, export to ONNX, quantize to int8,
    prune (structured, then int8), distil a small student (beside the same student trained alone), measure
    every variant on its artifact, name the best one under the recipe's constraints, write the report.
    The same as `edgeopt run demo`."""
    from edgeopt.recipe import run_recipe
    from edgeopt.recipe.demo import demo_recipe

    _trust(trust_model_code, model)
    r = demo_recipe(config=config, out_dir=out_dir, data=data, data_root=data_root, model=model, epochs=epochs,
                    threads=threads, latency_runs=latency_runs)
    if dump:
        import yaml

        print(yaml.safe_dump(r.raw, sort_keys=False), end="")
        return
    if dry_run:
        _print_plan(r, None, json_out)
        return
    results = run_recipe(r, progress=not json_out)
    model_name = (r.baseline.model or {}).get("name", "?")
    _finish(results, f"edgeopt demo ({r.data.name}, {model_name})", Path(r.out_dir), json_out)
