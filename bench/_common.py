"""Shared by the benchmarks: results JSON (with the machine) and the docs/benchmarks.md table.

Each benchmark writes ``bench/results/<name>.json``; ``write_markdown()`` rebuilds
``docs/benchmarks.md`` from every JSON there, so the page always shows the latest run of
each benchmark together with the machine it ran on and the command that produced it.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def save(name: str, title: str, headers: list[str], rows: list[list], notes: str = "", extra: dict | None = None) -> Path:
    from edgeopt._io import write_json_atomic
    from edgeopt.evaluate import machine_info

    payload = {
        "name": name,
        "title": title,
        "command": "python " + " ".join(shlex.quote(a) for a in [f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "headers": headers,
        "rows": rows,
        "notes": notes,
        "extra": extra or {},
    }
    path = write_json_atomic(RESULTS / f"{name}.json", payload)
    write_markdown()
    return path


def _machine(m: dict) -> str:
    keys = ("cpu", "physical_cores", "logical_cores", "ram_gb", "torch", "onnxruntime")
    have = {k: m.get(k) for k in keys}
    return (f"{have['cpu']}, {have['physical_cores']} physical / {have['logical_cores']} logical cores, "
            f"{have['ram_gb']} GB RAM, torch {have['torch']}, onnxruntime {have['onnxruntime']}")


def write_markdown() -> Path:
    from edgeopt._io import write_text_atomic

    parts = [
        "# Benchmarks",
        "",
        "Written by the scripts in `bench/` (`make bench` runs them all); each table says the",
        "machine it ran on and the command that wrote it. Timings are medians of many runs",
        "after warm-up, with the thread count set explicitly; two things are compared as a",
        "ratio measured in the same run. Timings are never pass/fail thresholds in tests.",
    ]
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        parts += ["", f"## {r['title']}", "", f"- command: `{r['command']}`",
                  f"- machine: {_machine(r['machine'])}", f"- run: {r['created']}", ""]
        parts.append("| " + " | ".join(r["headers"]) + " |")
        parts.append("|" + "|".join("---" for _ in r["headers"]) + "|")
        parts += ["| " + " | ".join(str(c) for c in row) + " |" for row in r["rows"]]
        if r.get("notes"):
            parts += ["", r["notes"]]
    return write_text_atomic(DOC, "\n".join(parts) + "\n")


def checkpoint_or_train(checkpoint: str, data: str, train_model: str | None, epochs: int,
                        augment: bool = False) -> Path:
    """``checkpoint`` when it exists; else train ``train_model`` on ``data`` into its folder
    (batch 128, lr 0.05, 2 threads) and return the best checkpoint."""
    ckpt = Path(checkpoint)
    if ckpt.is_file():
        return ckpt
    if not train_model:
        sys.exit(f"{ckpt} does not exist; pass --train-model NAME to train it first")
    from edgeopt.pipeline import DataConfig, ModelConfig, TrainJob, train_job
    from edgeopt.train import TrainConfig

    job = TrainJob(data=DataConfig(name=data), model=ModelConfig(name=train_model),
                   train=TrainConfig(epochs=epochs, batch_size=128, lr=0.05, out_dir=str(ckpt.parent),
                                     threads=2, progress=False, augment=augment))
    return Path(train_job(job).best_path)


def load_bench_model(ckpt: Path, data: str, name: str | None, out_dir: str):
    """``(model, arch, DataModule, results name, output folder)`` of a benchmark run."""
    from edgeopt.models import load_checkpoint
    from edgeopt.pipeline import DataConfig

    model, meta = load_checkpoint(ckpt)
    arch = (meta.get("arch") or {}).get("name", "model")
    dm = DataConfig(name=data).load()
    name = name or f"{arch}_{dm.name.split('/')[-1].split(':')[-1]}"
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    return model, arch, dm, name, out


def accuracy(runner, x, y, batch: int = 256) -> float:
    """Top-1 accuracy of a Runner on ``(x, y)``, in batches."""
    import numpy as np

    pred = np.concatenate([runner.predict(x[i:i + batch].numpy()).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y.numpy()).mean())


def median_ms(target, spec, runs: int, warmup: int = 20) -> float:
    """Batch-1 median latency of ``target`` in ms, at 1 thread."""
    from edgeopt.evaluate import measure_latency
    from edgeopt.runtime import get_runner

    r = get_runner(target, threads=1)
    return measure_latency(r, spec, batch_size=1, runs=runs, warmup=warmup, threads=1).median_ms


def interleaved_medians(targets: dict, spec, rounds: int = 20, runs: int = 20, warmup: int = 30) -> dict[str, float]:
    """Batch-1 median latency (ms, 1 thread) of several targets, timed in alternation.

    Each round times ``runs`` calls of every target in turn (the order rotates), so a slow
    minute on a shared machine slows every target alike and the ratios between them stay
    honest; a target's figure is the median of its per-round medians. ``targets`` maps a
    label to an artifact path, a Runner or an eager ``nn.Module``.
    """
    import numpy as np

    from edgeopt.evaluate import measure_latency
    from edgeopt.runtime import get_runner

    runners = {k: (t if hasattr(t, "predict") or hasattr(t, "forward") else get_runner(t, threads=1))
               for k, t in targets.items()}
    for r in runners.values():
        measure_latency(r, spec, batch_size=1, runs=1, warmup=warmup, threads=1)
    per: dict[str, list[float]] = {k: [] for k in runners}
    keys = list(runners)
    for i in range(rounds):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            per[k].append(measure_latency(runners[k], spec, batch_size=1, runs=runs, warmup=2, threads=1).median_ms)
    return {k: float(np.median(v)) for k, v in per.items()}


class Cells:
    """A JSON file of finished benchmark cells: a re-run skips them (``force`` redoes some).

    One failed cell becomes a row with its error, not a crash; only finished cells are kept.
    """

    def __init__(self, path: Path, force: set[str]) -> None:
        self.path, self.force = path, force
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, fn: Callable[[], dict]) -> dict:
        if key in self.data and key not in self.force:
            print(f"[bench] {key}: cached", file=sys.stderr, flush=True)
            return self.data[key]
        print(f"[bench] {key} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - one failed cell is a row, not a crash
            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        value["seconds"] = round(time.perf_counter() - t0, 1)
        if "error" not in value:
            from edgeopt._io import write_json_atomic

            self.data[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.data)
        return value
