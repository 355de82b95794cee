"""Pruning sensitivity on real digits: scan -> table -> prune -> recover."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.prune import PruneConfig, prune
from edgeopt.prune.schedule import val_accuracy
from edgeopt.prune.sensitivity import recommend, scan_sensitivity
from edgeopt.prune.table import read_sparsity_table
from edgeopt.prune.unstructured import METHOD, removal_count

LEVELS = (0.4, 0.5, 0.6, 0.7, 0.8)


def _test_acc(model, data) -> float:
    x, y = data.samples(10_000, split="test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_scan_table_prune_recover_on_digits(digits_cnn, digits_data, tmp_path):
    before = copy.deepcopy(digits_cnn.state_dict())
    res = scan_sensitivity(digits_cnn, digits_data, PruneConfig(), tmp_path / "scan", sparsities=LEVELS,
                           samples=512, threshold=1.0, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in digits_cnn.state_dict().items())  # not modified
    # accuracy on all 143 validation images, the unpruned model as given
    assert (res.split, res.samples, res.sparsities) == ("val", 143, list(LEVELS))
    assert res.base_acc == val_accuracy(digits_cnn, digits_data) >= 0.95
    assert [r["layer"] for r in res.rows] == ["features.1.0", "features.3.0", "features.5.0"]
    assert res.protected == {"features.0.0": "first layer", "fc": "last layer"}
    for r in res.rows:
        assert len(r["drops"]) == len(LEVELS)
        assert r["drops"] == [round(100 * (res.base_acc - a), 3) for a in r["accs"]]
        assert r["recommended"] == recommend(r["drops"], LEVELS, 1.0)
    # measured: recommended 0.0, 0.6, 0.6; every layer loses > 1 point at 80 % alone
    assert max(r["recommended"] for r in res.rows) >= 0.5
    assert all(r["drops"][-1] > 1.0 for r in res.rows)

    # one cell checked independently: features.5.0 at 60 %, on the same 143 images
    work = copy.deepcopy(digits_cnn)
    METHOD(work, PruneConfig(ratio=0.6), ["features.5.0"], {"features.5.0": 0.6})
    assert res.rows[2]["accs"][2] == pytest.approx(val_accuracy(work, digits_data), abs=1e-6)

    files = {k: tmp_path / "scan" / v for k, v in
             {"csv": "sensitivity.csv", "json": "sensitivity.json", "png": "sensitivity.png",
              "table": "sparsity_table.csv"}.items()}
    assert res.files == {k: str(v) for k, v in files.items()}
    with open(files["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["layer", "kind", "params", "drop_40", "drop_50", "drop_60", "drop_70", "drop_80",
                             "recommended"]
    assert [float(r["recommended"]) for r in rows] == [r["recommended"] for r in res.rows]
    assert json.loads(files["json"].read_text())["table"] == res.table
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the table feeds pruning unchanged (protected layers listed at 0)
    table = read_sparsity_table(files["table"])
    assert table == res.table | {"features.0.0": 0.0, "fc": 0.0}
    pruned = prune(digits_cnn, PruneConfig(ratio=0.0, layer_ratios=table, finetune_epochs=2), digits_data)
    for name, s in table.items():
        w = pruned.model.get_submodule(name).weight
        assert int((w == 0).sum()) == removal_count(w.numel(), s)  # e.g. 88474 of 147456 at 0.6
    chosen = [r for r in pruned.layers if r["protected"] is None]
    total = sum(r["weight_after"] for r in chosen)
    assert sum(r["weight_after"] - r["nonzero_after"] for r in chosen) / total >= 0.4  # measured 0.554
    # 2 recovery epochs: within 1.5 points of the unpruned model on test (measured 0.983 vs 0.983)
    assert _test_acc(pruned.model, digits_data) >= _test_acc(digits_cnn, digits_data) - 0.015


def test_scan_without_out_dir_writes_nothing_and_checks_its_arguments(digits_cnn, digits_data, tmp_path):
    res = scan_sensitivity(digits_cnn, digits_data, PruneConfig(include=("features.5.0",)),
                           sparsities=(0.9, 0.5), samples=64, threshold=100.0, progress=False)
    assert res.files == {} and res.sparsities == [0.5, 0.9] and res.samples == 64
    assert [r["layer"] for r in res.rows] == ["features.5.0"] and res.table == {"features.5.0": 0.9}
    for bad in ({"sparsities": (0.5, 1.0)}, {"sparsities": ()}, {"threshold": -1.0}, {"samples": 0}):
        with pytest.raises(ConfigError):
            scan_sensitivity(digits_cnn, digits_data, None, tmp_path / "x", progress=False, **bad)
    assert not (tmp_path / "x").exists()


def test_structured_scan_prunes_the_channels_of_one_layer_at_a_time(digits_cnn, digits_data):
    cfg = PruneConfig(method="structured", include=("features.5.0",))
    res = scan_sensitivity(digits_cnn, digits_data, cfg, sparsities=(0.25, 0.5), progress=False)
    assert res.method == "structured" and [r["layer"] for r in res.rows] == ["features.5.0"]
    # the same cell through prune(): 64 of 128 channels left, the other layers whole
    pruned = prune(digits_cnn, cfg.replace(ratio=0.5))
    assert {r["name"]: r["channels_after"] for r in pruned.layers} == {
        "features.0.0": 32, "features.1.0": 64, "features.3.0": 128, "features.5.0": 64, "fc": 10}
    assert res.rows[0]["accs"][1] == pytest.approx(val_accuracy(pruned.model, digits_data), abs=1e-6)
