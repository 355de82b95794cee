"""Energy estimate: exact arithmetic with the Horowitz (ISSCC 2014) constants."""

from __future__ import annotations

import pytest

from edgeopt.errors import ConfigError
from edgeopt.evaluate import estimate_energy


def test_fp32_arithmetic_exact():
    e = estimate_energy(2_000_000, {"weights": 10_000, "activations": 40_000}, "fp32")
    assert e.compute_uJ == pytest.approx(2e6 * (3.7 + 0.9) * 1e-6, rel=1e-12)  # 9.2
    assert e.weights_uJ == pytest.approx(10_000 * 160 * 1e-6, rel=1e-12)  # 1.6 (DRAM)
    assert e.activations_uJ == pytest.approx(40_000 * 1.25 * 1e-6, rel=1e-12)  # 0.05 (SRAM)
    assert e.memory_uJ == pytest.approx(1.65, rel=1e-12)
    assert e.total_uJ == pytest.approx(10.85, rel=1e-12)
    assert e.label == "estimate (Horowitz ISSCC 2014, 45 nm)"
    assert e.constants["dram_pJ_per_byte"] == 160 and e.constants["sram_pJ_per_byte"] == 1.25


@pytest.mark.parametrize("prec,per_mac", [("int8", 0.23), ("qint8", 0.23), ("fp16", 1.5), ("float32", 4.6)])
def test_per_mac_energy_by_precision(prec, per_mac):
    e = estimate_energy(1_000_000, 0, prec)
    assert e.compute_uJ == pytest.approx(per_mac, rel=1e-12) and e.memory_uJ == 0


def test_dram_activations_and_plain_byte_count():
    e = estimate_energy(0, {"weights": 0, "activations": 1000}, activation_memory="dram")
    assert e.total_uJ == pytest.approx(0.16, rel=1e-12)
    assert estimate_energy(0, 1000).weights_uJ == pytest.approx(0.16, rel=1e-12)


@pytest.mark.parametrize("kwargs", [{"precision": "int3"}, {"activation_memory": "l2"}, {"macs": -1}])
def test_bad_inputs_are_config_errors(kwargs):
    args = {"macs": 10, "bytes_moved": 0, **kwargs}
    with pytest.raises(ConfigError):
        estimate_energy(**args)
