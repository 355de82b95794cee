"""A results dict shaped like a recipe run's: a baseline and six variants, with a choice."""

from __future__ import annotations

from edgeopt.evaluate.constraints import Constraints, apply_choice
from edgeopt.evaluate.results import new_results, new_variant

# name, runtime, precision, top-1, batch-1 median ms, bytes
ROWS = [
    ("baseline torch", "torch", "fp32", 0.9861, 0.689, 973_000),
    ("baseline onnx", "onnxruntime", "fp32", 0.9861, 0.067, 972_000),
    ("int8", "onnxruntime", "int8", 0.9861, 0.037, 259_000),
    ("pruned 50", "onnxruntime", "fp32", 0.9777, 0.030, 268_000),
    ("pruned 50 + int8", "onnxruntime", "int8", 0.9777, 0.026, 80_000),
    ("student", "onnxruntime", "fp32", 0.9749, 0.017, 100_000),
    ("student (trained alone)", "onnxruntime", "fp32", 0.9610, 0.015, 100_000),
]


def make_results(constraints: dict | None = None) -> dict:
    r = new_results("demo", {"recipe": "recipes/demo.yaml"})
    for name, rt, prec, top1, ms, size in ROWS:
        r["variants"].append(new_variant(
            name, runtime=rt, precision=prec, format="onnx" if rt == "onnxruntime" else "safetensors",
            accuracy={"top1": top1, "n": 359},
            latency={"batch1": {"median_ms": ms, "p90_ms": ms * 1.2, "p99_ms": ms * 1.5, "runs": 100, "threads": 1},
                     "throughput": {"throughput": 1000 / ms, "batch_size": 64}},
            size={"bytes": size, "gzip_bytes": int(size * 0.9), "params": size // 4},
            memory={"peak_rss_mb": 70.0, "baseline_mb": 55.0, "delta_mb": 15.0}))
    r["baseline"] = "baseline torch"
    r["recipe"] = {"name": "demo", "variants": {"int8": [{"quantize": {"backend": "onnxruntime"}}]}}
    apply_choice(r, Constraints.from_dict(constraints or {"max_drop": 1.0, "max_size_mb": 0.5}))
    return r
