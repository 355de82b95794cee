"""Child process of :func:`edgeopt.evaluate.measure_peak_memory` (not a public API).

Run as ``python -m edgeopt.evaluate._memory_probe --target PATH ...``. It reads the
process's peak resident set size (Linux: ``VmHWM`` of /proc/self/status; elsewhere
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, see :func:`peak_rss_mb` for why not
``ru_maxrss`` on Linux) at three points and prints one JSON line, prefixed with
``EDGEOPT_MEMORY_PROBE``, on stdout:

1. ``baseline``: after importing the runtime's libraries, before loading the artifact;
2. ``after_load``: after building the Runner (reading the file, creating the session);
3. ``peak``: after ``runs`` inference calls on one fixed batch.

Both are high-water marks, so each reading is the peak so far. On failure the
last stderr line is ``ErrorName: message`` and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

MARKER = "EDGEOPT_MEMORY_PROBE "

# Which library a runtime loads, imported before the baseline reading so that its code
# and static data count as "baseline", not as the model's cost.
# Every runner that loads a library: a missing entry put torch's ~480 MiB into the
# "model" share of every TorchScript (torch x86 int8) artifact.
_BACKENDS = {"onnxruntime": "onnxruntime", "torch": "torch", "torchscript": "torch", "torch_export": "torch",
             "litert": "ai_edge_litert.interpreter", "openvino": "openvino"}
_SUFFIX_RUNTIME = {".onnx": "onnxruntime", ".safetensors": "torch", ".pt": "torchscript", ".pth": "torch",
                   ".pt2": "torch_export", ".tflite": "litert", ".xml": "openvino"}


def _vm_hwm_mb() -> float | None:
    """``VmHWM`` (peak RSS of this process image) from /proc/self/status, in MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        return None
    return None


def peak_rss_mb() -> tuple[float, str]:
    """This process's peak resident set size so far, in MiB, and where it was read.

    Linux: ``VmHWM``. ``ru_maxrss`` is wrong in a child on Linux: ``execve`` carries the
    parent's high-water mark over into the child (a child of a process holding 1 GB reports
    1 GB), while ``VmHWM`` belongs to the new process image. Elsewhere: ``ru_maxrss``
    (KiB on Linux, bytes on macOS).
    """
    hwm = _vm_hwm_mb()
    if hwm is not None:
        return hwm, "VmHWM"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024), "ru_maxrss"


def _runtime_for(target: str, runtime: str | None) -> str | None:
    if runtime:
        return runtime
    for suffix, rt in _SUFFIX_RUNTIME.items():
        if target.lower().endswith(suffix):
            return rt
    return None


def _make_runner(target: str, runtime: str | None, threads: int):
    """Build the runner from the registry, not ``get_runner``: that one imports torch for
    every runtime, which would put torch's few hundred MB into an onnxruntime reading."""
    from edgeopt.artifact import Artifact
    from edgeopt.runtime import RUNNERS

    artifact = Artifact.load(target)
    return RUNNERS.get(runtime or artifact.default_runtime)(artifact, threads=threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeopt.evaluate._memory_probe")
    ap.add_argument("--target", required=True)
    ap.add_argument("--runtime", default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--input-shape", default=None, help="C,H,W of one image")
    args = ap.parse_args(argv)
    try:
        import numpy as np

        import edgeopt  # everything imported before the baseline reading counts as baseline

        runtime = _runtime_for(args.target, args.runtime)
        backend = _BACKENDS.get(runtime or "")
        if backend:
            try:
                __import__(backend)
            except ImportError:
                pass  # not installed: building the runner says so in one line
        if runtime == "torch":
            import edgeopt.models  # the architectures a checkpoint is rebuilt from
        import edgeopt.artifact
        import edgeopt.runtime  # noqa: F401

        if args.target.lower().endswith(".onnx") and not Path(args.target + ".edgeopt.json").is_file():
            import onnx  # noqa: F401  (Artifact.load reads a sidecar-less ONNX file with it)
        baseline, source = peak_rss_mb()

        runner = _make_runner(args.target, runtime, args.threads)
        after_load, _ = peak_rss_mb()

        if args.input_shape:
            shape = tuple(int(d) for d in args.input_shape.split(","))
        else:
            shape = tuple(getattr(runner, "input_shape", ()) or ())
            shape = shape[-3:] if len(shape) >= 3 else shape
            if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
                raise RuntimeError("the input shape is unknown; pass --input-shape C,H,W")
        x = np.random.default_rng(0).standard_normal((args.batch_size, *shape)).astype(np.float32)
        for _ in range(args.runs):
            out = runner.predict(x)
        peak, _ = peak_rss_mb()
        record = {
            "baseline_mb": baseline,
            "after_load_mb": after_load,
            "peak_rss_mb": peak,
            "runtime": str(getattr(runner, "name", runtime)),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "runs": args.runs,
            "output_shape": list(np.asarray(out).shape) if args.runs else None,
            "torch_loaded": "torch" in sys.modules,
            "source": source,
        }
    except Exception as exc:  # report one line; the parent shows it
        one_line = getattr(exc, "one_line", None)
        msg = one_line() if callable(one_line) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        print(msg, file=sys.stderr, flush=True)
        return 2
    print(MARKER + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
