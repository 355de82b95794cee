"""Peak resident memory of inference, measured in a fresh child process.

Why a child: the measuring process has already imported torch, loaded data and other
models; its own allocations would pollute any reading, and a process's peak RSS can only
go up. A fresh ``python -m edgeopt.evaluate._memory_probe`` process imports only what the
runtime needs, then reads its own peak resident set size. On Linux that is ``VmHWM`` from
``/proc/self/status``, not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: ``execve``
carries the parent's ``ru_maxrss`` over into the child, so a child of a process that holds
1 GB would report 1 GB. Elsewhere (macOS) it is ``ru_maxrss``. Readings:

* ``baseline_mb``: after imports (interpreter + runtime libraries), before the artifact;
* ``after_load_mb``: after the Runner is built (file read, session created);
* ``peak_rss_mb``: after ``runs`` inference calls at ``batch_size``.

``delta_mb = peak_rss_mb - baseline_mb`` is what the model and its inference add: the
number to compare between variants. ``peak_rss_mb`` is what the whole process needed.
The ``*_mb`` fields are MiB (2**20 bytes) and reports say MiB; the names stay as they are
for results.json readers. File sizes elsewhere are bytes, shown as MB (10**6 bytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeopt.errors import ArtifactError, ConfigError

METHOD = "peak RSS (VmHWM on Linux, else ru_maxrss) of a fresh child process (python -m edgeopt.evaluate._memory_probe)"


@dataclasses.dataclass(frozen=True)
class MemoryResult:
    """Peak resident memory of loading and running one artifact (MiB)."""

    peak_rss_mb: float
    baseline_mb: float
    after_load_mb: float
    delta_mb: float
    load_mb: float
    runtime: str
    batch_size: int
    runs: int
    threads: int
    torch_loaded: bool
    source: str = "VmHWM"  # which counter was read: "VmHWM" (Linux) or "ru_maxrss"
    method: str = METHOD

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _src_root() -> str:
    """The folder that holds the ``edgeopt`` package, so the child imports this same copy."""
    import edgeopt

    return str(Path(edgeopt.__file__).resolve().parent.parent)


def _spec_of(target: Any, path: Path) -> Any:
    """The ModelSpec of an artifact or checkpoint, if one can be found without loading it."""
    spec = getattr(target, "spec", None)
    if spec is not None:
        return spec
    try:
        import warnings

        from edgeopt.artifact import Artifact

        with warnings.catch_warnings():  # a guessed spec warns; the child warns again if it matters
            warnings.simplefilter("ignore")
            return Artifact.load(path).spec
    except Exception:
        pass
    try:
        from edgeopt.models import read_sidecar
        from edgeopt.spec import ModelSpec

        side = read_sidecar(path)
        if side.get("spec"):
            return ModelSpec.from_dict(side["spec"])
    except Exception:
        pass
    return None


def measure_peak_memory(
    target: Any,
    runtime: str | None = None,
    batch_size: int = 1,
    runs: int = 5,
    *,
    threads: int = 1,
    spec: Any = None,
    timeout: float = 180.0,
) -> MemoryResult:
    """Peak resident memory of loading ``target`` and running inference, in a child process.

    Args:
        target: an artifact path (``.onnx``, a checkpoint ``.safetensors``), an
            ``edgeopt.artifact.Artifact``, or an ``nn.Module`` built by
            ``edgeopt.models.create_model`` (saved to a temporary checkpoint first and
            measured on the torch runtime; a module without ``edgeopt_arch`` is refused,
            because the child could not rebuild it).
        runtime: the runtime to load it with (``"torch"``, ``"onnxruntime"``); None: the
            default for the file type.
        batch_size: images per inference call.
        runs: inference calls (the peak usually settles after the first).
        threads: intra-op threads in the child (also sets ``OMP_NUM_THREADS``).
        spec: the ModelSpec (input shape); None: read from the artifact's sidecar.
        timeout: seconds before the child is killed.

    Returns:
        A MemoryResult (``peak_rss_mb``, ``baseline_mb``, ``delta_mb`` ...).

    Raises:
        ArtifactError: the target does not exist, or the child failed or timed out (the
            message ends with the child's last stderr line).
        ConfigError: bad settings, or a module that cannot be saved as a checkpoint.

    Example:
        >>> r = measure_peak_memory("model.onnx", "onnxruntime")  # doctest: +SKIP
        >>> r.peak_rss_mb >= r.baseline_mb > 0  # doctest: +SKIP
        True
    """
    if batch_size < 1 or runs < 1 or threads < 1:
        raise ConfigError("measure_peak_memory: batch_size, runs and threads must be >= 1")
    try:
        import torch

        is_module = isinstance(target, torch.nn.Module)
    except ImportError:  # pragma: no cover
        is_module = False
    if is_module:
        if getattr(target, "edgeopt_arch", None) is None:
            raise ConfigError(
                "measure_peak_memory needs a file the child process can load; this module has no "
                "edgeopt_arch (build it with edgeopt.models.create_model, or pass an exported artifact)"
            )
        from edgeopt.models import save_checkpoint

        with tempfile.TemporaryDirectory(prefix="edgeopt-mem-") as tmp:
            path = save_checkpoint(Path(tmp) / "model", target)
            return measure_peak_memory(
                path, runtime or "torch", batch_size, runs, threads=threads,
                spec=spec if spec is not None else getattr(target, "edgeopt_spec", None), timeout=timeout,
            )

    path = Path(getattr(target, "path", target))
    if not path.exists():
        raise ArtifactError(f"measure_peak_memory: {path} does not exist")
    spec = spec if spec is not None else _spec_of(target, path)
    cmd = [
        sys.executable, "-m", "edgeopt.evaluate._memory_probe",
        "--target", str(path), "--batch-size", str(batch_size), "--runs", str(runs),
        "--threads", str(threads),
    ]
    if runtime:
        cmd += ["--runtime", runtime]
    if spec is not None:
        cmd += ["--input-shape", ",".join(str(int(d)) for d in spec.input_shape)]
    from edgeopt.models.trust import trusted_env

    env = trusted_env(dict(os.environ))  # the child may rebuild model code this process allowed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_src_root(), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = str(threads)  # the torch / OpenMP pool, before it starts
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"the memory probe for {path} timed out after {timeout:g} s") from None
    record = None
    for line in proc.stdout.splitlines():
        if line.startswith("EDGEOPT_MEMORY_PROBE "):
            record = json.loads(line[len("EDGEOPT_MEMORY_PROBE "):])
    if proc.returncode != 0 or record is None:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "(no error output)"
        raise ArtifactError(
            f"the memory probe for {path} failed (exit status {proc.returncode}): {last}"
        )
    baseline, loaded, peak = record["baseline_mb"], record["after_load_mb"], record["peak_rss_mb"]
    return MemoryResult(
        peak_rss_mb=round(peak, 3),
        baseline_mb=round(baseline, 3),
        after_load_mb=round(loaded, 3),
        delta_mb=round(peak - baseline, 3),
        load_mb=round(loaded - baseline, 3),
        runtime=record["runtime"],
        batch_size=batch_size,
        runs=runs,
        threads=threads,
        torch_loaded=bool(record["torch_loaded"]),
        source=str(record.get("source", "ru_maxrss")),
    )
