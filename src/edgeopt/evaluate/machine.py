"""What machine a result was measured on: CPU, cores, memory, OS, library versions.

Every results file records this, so a latency number is never read without the machine
that produced it. Library versions are read from package metadata (no heavy import);
only the torch thread count and GPU name need torch itself.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_LIBRARIES = ("torch", "torchvision", "onnx", "onnxruntime", "numpy")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_model(cpuinfo: str) -> str:
    # x86: "model name"; ARM Linux: "Hardware" / "Model" / "Processor" depending on kernel.
    for key in ("model name", "Hardware", "Model", "Processor", "cpu model"):
        for line in cpuinfo.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == key and v.strip():
                return v.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _physical_cores(cpuinfo: str) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where not listed."""
    cores, phys = set(), "0"
    for line in cpuinfo.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "physical id":
            phys = v.strip()
        elif k == "core id":
            cores.add((phys, v.strip()))
    return len(cores) or None


def _ram_gb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 2)  # kB -> GiB
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 2)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def _cpu_quota() -> float | None:
    """CPUs allowed by a cgroup v2 quota (containers), e.g. 2.0; None when unlimited."""
    text = _read("/sys/fs/cgroup/cpu.max").split()
    if len(text) == 2 and text[0] != "max":
        try:
            return round(int(text[0]) / int(text[1]), 2)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Describe this machine and the library versions, for a results file.

    Returns:
        A flat dict: ``cpu``, ``arch``, ``physical_cores``, ``logical_cores``,
        ``available_cores`` (this process's CPU affinity), ``cpu_quota`` (cgroup limit or
        None), ``ram_gb``, ``os``, ``python``, ``edgeopt``, one key per library version
        (``torch``, ``torchvision``, ``onnx``, ``onnxruntime``, ``numpy``; None if absent),
        ``runtimes`` (from ``edgeopt.runtime.runtime_versions`` when available),
        ``torch_threads``, ``gpu`` (name or None) and ``timestamp`` (UTC, ISO 8601).

    Example:
        >>> info = machine_info()
        >>> info["logical_cores"] >= 1 and "torch" in info
        True
    """
    import edgeopt

    cpuinfo = _read("/proc/cpuinfo")
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        available = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(cpuinfo),
        "arch": platform.machine(),
        "physical_cores": _physical_cores(cpuinfo),
        "logical_cores": os.cpu_count(),
        "available_cores": available,
        "cpu_quota": _cpu_quota(),
        "ram_gb": _ram_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "edgeopt": edgeopt.__version__,
    }
    for lib in _LIBRARIES:
        info[lib] = _version(lib)
    info["runtimes"] = _runtime_versions()
    info["torch_threads"] = None
    info["gpu"] = None
    if "torch" in sys.modules or info["torch"]:
        try:
            import torch

            info["torch_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except Exception:  # pragma: no cover - a broken CUDA install must not stop a report
            pass
    info["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return info


def _runtime_versions() -> dict[str, Any] | None:
    try:
        from edgeopt.runtime import runtime_versions
    except ImportError:
        return None
    try:
        return dict(runtime_versions())
    except Exception:  # pragma: no cover - a version probe must not stop a report
        return None
