"""Pruning that shrinks the deployed model: unstructured, structured, second-order (OBS).

``prune(model, PruneConfig(...), data)`` returns a :class:`PruneResult` with a new model
and what changed (per-layer sparsity or channels, parameters, MACs, protected layers).
Structured pruning removes channels through torch-pruning's DependencyGraph and records
the new shapes, so the model saves as safetensors + JSON sidecar and reloads without
pickle. ``scan_sensitivity`` prunes each layer alone; its table feeds ``layer_ratios``.
Sparse checkpoints (bitmask + packed values) are in :mod:`edgeopt.prune.sparse_storage`.
"""

from edgeopt.prune._base import Pruned, PruneResult, list_methods, prune
from edgeopt.prune.config import PruneConfig
from edgeopt.prune.layers import match_patterns, prunable_layers, select_layers
from edgeopt.prune.table import read_sparsity_table, template, write_sparsity_table

__all__ = [
    "PruneConfig",
    "PruneResult",
    "Pruned",
    "list_methods",
    "match_patterns",
    "prunable_layers",
    "prune",
    "read_sparsity_table",
    "scan_sensitivity",
    "select_layers",
    "template",
    "write_sparsity_table",
]


def __getattr__(name: str):
    if name == "scan_sensitivity":  # imports matplotlib on first use
        from edgeopt.prune.sensitivity import scan_sensitivity

        return scan_sensitivity
    raise AttributeError(name)
