"""An energy *estimate* per inference from MACs and bytes moved (not a measurement).

Constants: M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, 45 nm process, 0.9 V. Energy per operation:

=================================  ===========
operation                          energy (pJ)
=================================  ===========
32-bit float multiply / add        3.7 / 0.9
16-bit float multiply / add        1.1 / 0.4
8-bit integer multiply / add       0.2 / 0.03
DRAM access, per 32-bit word       640   (= 160 pJ per byte)
SRAM 8 KB cache, per 32-bit word   5     (= 1.25 pJ per byte)
=================================  ===========

One MAC is one multiply plus one add at the variant's precision.

Assumptions (stated in every estimate):

* **Weights** are read once per inference from DRAM (they do not fit on-chip on a
  typical edge device, and are not reused across inferences in a cache).
* **Activations** are read and written in on-chip SRAM at the 8 KB-cache cost, by
  default (``activation_memory="sram"``). This is a lower bound: large feature maps
  spill to bigger, costlier SRAM or to DRAM. Pass ``activation_memory="dram"`` for the
  pessimistic bound.
* Real hardware differs (newer process nodes cost less; caches, DMA and leakage are
  ignored). Use the estimate to compare variants of one model, not as joules on a device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeopt.errors import ConfigError

LABEL = "estimate (Horowitz ISSCC 2014, 45 nm)"

# pJ per operation, Horowitz ISSCC 2014 (45 nm).
MAC_PJ: dict[str, dict[str, float]] = {
    "fp32": {"mult": 3.7, "add": 0.9},
    "fp16": {"mult": 1.1, "add": 0.4},
    "int8": {"mult": 0.2, "add": 0.03},
}
DRAM_PJ_PER_WORD = 640.0  # one 32-bit word
SRAM_PJ_PER_WORD = 5.0  # one 32-bit word, 8 KB cache
DRAM_PJ_PER_BYTE = DRAM_PJ_PER_WORD / 4  # 160
SRAM_PJ_PER_BYTE = SRAM_PJ_PER_WORD / 4  # 1.25

# Spellings seen in artifact sidecars and configs -> the table's key.
_PRECISION_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "f32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "f16": "fp16",
    "int8": "int8", "qint8": "int8", "quint8": "int8", "i8": "int8",
    "int8-dynamic": "int8", "int8-static": "int8", "int8_dynamic": "int8", "int8_static": "int8",
}
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


def normalize_precision(precision: str) -> str:
    """``"float32"`` -> ``"fp32"``, ``"qint8"`` -> ``"int8"``; unknown is a ConfigError.

    Example:
        >>> normalize_precision("float16")
        'fp16'
    """
    key = _PRECISION_ALIASES.get(str(precision).lower())
    if key is None:
        raise ConfigError(
            f"energy estimate: unknown precision {precision!r}; choices: fp32, fp16, int8"
        )
    return key


@dataclasses.dataclass(frozen=True)
class EnergyEstimate:
    """Estimated energy of one inference, in microjoules (µJ), with its assumptions."""

    compute_uJ: float
    memory_uJ: float
    total_uJ: float
    weights_uJ: float
    activations_uJ: float
    macs: int
    weight_bytes: float
    activation_bytes: float
    precision: str
    activation_memory: str
    constants: dict[str, Any]
    assumptions: list[str]
    label: str = LABEL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def estimate_energy(
    macs: int,
    bytes_moved: float | dict[str, float],
    precision: str = "fp32",
    activation_memory: str = "sram",
) -> EnergyEstimate:
    """Estimate the energy of one inference from its MACs and bytes moved.

    Args:
        macs: multiply-accumulates of one inference (``MacsResult.total_macs``).
        bytes_moved: ``{"weights": bytes, "activations": bytes}`` (``MacsResult.bytes_moved``
            at the variant's bytes per element), or one number taken as weight bytes
            (all read from DRAM).
        precision: arithmetic precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (aliases
            such as ``"float32"`` and ``"qint8"`` are accepted).
        activation_memory: where activations live: ``"sram"`` (default, lower bound) or
            ``"dram"``.

    Returns:
        An EnergyEstimate (``label`` says it is an estimate and where the constants come from).

    Raises:
        ConfigError: a negative count, unknown precision or memory.

    Example:
        >>> e = estimate_energy(1_000_000, {"weights": 1000, "activations": 4000})
        >>> round(e.compute_uJ, 6), round(e.memory_uJ, 6), round(e.total_uJ, 6)
        (4.6, 0.165, 4.765)
    """
    prec = normalize_precision(precision)
    if activation_memory not in ("sram", "dram"):
        raise ConfigError(f"energy estimate: activation_memory={activation_memory!r} must be 'sram' or 'dram'")
    if isinstance(bytes_moved, dict):
        unknown = set(bytes_moved) - {"weights", "activations"}
        if unknown:
            raise ConfigError(f"energy estimate: bytes_moved has unknown key(s) {sorted(unknown)}; use weights, activations")
        w_bytes = float(bytes_moved.get("weights", 0))
        a_bytes = float(bytes_moved.get("activations", 0))
    else:
        w_bytes, a_bytes = float(bytes_moved), 0.0
    if macs < 0 or w_bytes < 0 or a_bytes < 0:
        raise ConfigError("energy estimate: MACs and bytes must be >= 0")

    per_mac_pj = MAC_PJ[prec]["mult"] + MAC_PJ[prec]["add"]
    act_pj_per_byte = SRAM_PJ_PER_BYTE if activation_memory == "sram" else DRAM_PJ_PER_BYTE
    compute_pj = macs * per_mac_pj
    weights_pj = w_bytes * DRAM_PJ_PER_BYTE
    acts_pj = a_bytes * act_pj_per_byte
    uj = 1e-6  # pJ -> µJ
    return EnergyEstimate(
        compute_uJ=compute_pj * uj,
        memory_uJ=(weights_pj + acts_pj) * uj,
        total_uJ=(compute_pj + weights_pj + acts_pj) * uj,
        weights_uJ=weights_pj * uj,
        activations_uJ=acts_pj * uj,
        macs=int(macs),
        weight_bytes=w_bytes,
        activation_bytes=a_bytes,
        precision=prec,
        activation_memory=activation_memory,
        constants={
            "mac_pJ": per_mac_pj,
            "mult_pJ": MAC_PJ[prec]["mult"],
            "add_pJ": MAC_PJ[prec]["add"],
            "dram_pJ_per_byte": DRAM_PJ_PER_BYTE,
            "sram_pJ_per_byte": SRAM_PJ_PER_BYTE,
            "activation_pJ_per_byte": act_pj_per_byte,
            "source": "Horowitz, ISSCC 2014, 45 nm",
        },
        assumptions=[
            "one MAC = one multiply + one add at the variant's precision",
            "weights read once per inference from DRAM (160 pJ/byte)",
            f"activations read/written in {activation_memory.upper()} "
            f"({act_pj_per_byte:g} pJ/byte)" + (" - a lower bound" if activation_memory == "sram" else ""),
            "caches, leakage and data-movement overheads beyond these are ignored",
        ],
    )
