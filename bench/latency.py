"""Batch-1 latency of MobileNetV2-CIFAR: PyTorch eager against ONNX Runtime, as a ratio.

Both run the same fp32 model (random init: latency does not depend on the weights'
values) on the same input, with the same thread count, in one process, one after the
other; each is warmed up and then timed over many runs.

Usage: python bench/latency.py [--model mobilenetv2] [--threads 1 2] [--runs 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    args = ap.parse_args()

    import torch

    from edgeopt.evaluate import measure_latency
    from edgeopt.export import export_model
    from edgeopt.models import create_model
    from edgeopt.runtime import get_runner
    from edgeopt.spec import ModelSpec

    spec = ModelSpec((3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), dataset="cifar10")
    torch.manual_seed(0)
    model = create_model(args.model, spec).eval()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        samples = spec.example_input(64)
        art = export_model(model, "onnx", Path(d) / "m.onnx", samples=samples).artifact
        for threads in args.threads:
            res = {}
            for rt, target in (("torch", model), ("onnxruntime", art)):
                runner = get_runner(target, runtime=rt, threads=threads)
                res[rt] = measure_latency(runner, spec, batch_size=1, warmup=args.warmup, runs=args.runs,
                                          threads=threads).to_dict()
            for rt in ("torch", "onnxruntime"):
                r = res[rt]
                ratio = res["torch"]["median_ms"] / r["median_ms"]
                rows.append([args.model, rt, threads, f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                             f"{r['p99_ms']:.3f}", f"{ratio:.2f}x"])
    save(
        "latency_mobilenetv2", f"Batch-1 latency: {args.model} (3x32x32, 10 classes), fp32, torch eager vs ONNX Runtime",
        ["model", "runtime", "threads", "median ms", "p90 ms", "p99 ms", "speed-up vs torch eager (median)"],
        rows,
        notes=f"{args.runs} timed runs after {args.warmup} warm-up runs per row; speed-up = torch eager median / "
              "this runtime's median at the same thread count, measured in the same run.",
    )
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
