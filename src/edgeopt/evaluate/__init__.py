"""Measure every variant the same way, on the artifact that would be deployed.

Public API:

* :func:`evaluate_accuracy` ``(runner, data, split="test")`` -> :class:`AccuracyResult`
* :func:`measure_latency` / :func:`measure_throughput` ``(runner, spec, ...)`` -> :class:`LatencyResult`
* :func:`measure_size` ``(path | Artifact | nn.Module)`` -> :class:`SizeResult`
* :func:`count_macs` ``(model, spec)`` -> :class:`MacsResult`
* :func:`measure_peak_memory` ``(artifact, runtime)`` -> :class:`MemoryResult` (child process)
* :func:`estimate_energy` ``(macs, bytes_moved, precision)`` -> :class:`EnergyEstimate`
* :func:`machine_info` ``()`` -> dict
* :func:`evaluate_variant` ``(name, target, data, model=...)`` -> one row of ``results.json``
* results schema: :func:`new_results`, :func:`add_variant`, :func:`save_results`,
  :func:`load_results`, :func:`validate_results`, ``RESULTS_SCHEMA_VERSION``

Nothing here imports torch at import time (the memory probe child relies on it).

Example:
    >>> from edgeopt.evaluate import estimate_energy
    >>> round(estimate_energy(1_000_000, 0).total_uJ, 6)
    4.6
"""

from edgeopt.evaluate.accuracy import AccuracyResult, evaluate_accuracy
from edgeopt.evaluate.constraints import Constraints, apply_choice, choose
from edgeopt.evaluate.energy import EnergyEstimate, estimate_energy
from edgeopt.evaluate.latency import (
    LatencyConfig,
    LatencyResult,
    measure_latency,
    measure_throughput,
)
from edgeopt.evaluate.machine import machine_info
from edgeopt.evaluate.macs import MacsResult, count_macs
from edgeopt.evaluate.memory import MemoryResult, measure_peak_memory
from edgeopt.evaluate.results import (
    RESULTS_SCHEMA_VERSION,
    add_variant,
    load_results,
    new_results,
    new_variant,
    save_results,
    validate_results,
)
from edgeopt.evaluate.size import SizeResult, gzip_size, measure_size
from edgeopt.evaluate.variant import evaluate_variant

__all__ = [
    "RESULTS_SCHEMA_VERSION",
    "AccuracyResult",
    "Constraints",
    "EnergyEstimate",
    "LatencyConfig",
    "LatencyResult",
    "MacsResult",
    "MemoryResult",
    "SizeResult",
    "add_variant",
    "apply_choice",
    "choose",
    "count_macs",
    "estimate_energy",
    "evaluate_accuracy",
    "evaluate_variant",
    "gzip_size",
    "load_results",
    "machine_info",
    "measure_latency",
    "measure_peak_memory",
    "measure_size",
    "measure_throughput",
    "new_results",
    "new_variant",
    "save_results",
    "validate_results",
]
