"""Fine-tuning keeps masks exact; iterative pruning stops at max_drop and resumes; the gradual
(Zhu & Gupta) schedule ends at the exact final sparsity. All on real digits."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.prune import PruneConfig, Pruned, prune
from edgeopt.prune import schedule as sched
from edgeopt.prune.gradual import gradual_plan
from edgeopt.prune.schedule import finetune, val_accuracy
from edgeopt.prune.unstructured import METHOD, removal_count

CHOSEN = ("features.1.0", "features.3.0", "features.5.0")  # simple_cnn less first and last
NUMEL = {"features.1.0": 18432, "features.3.0": 73728, "features.5.0": 147456}


def _zeros(model, name: str) -> int:
    return int((model.get_submodule(name).weight == 0).sum())


def _test_acc(model, data) -> float:
    x, y = data.samples(10_000, split="test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_unstructured_masks_survive_finetuning_to_the_weight(digits_cnn, digits_data):
    work = copy.deepcopy(digits_cnn)
    out = METHOD(work, PruneConfig(ratio=0.7), list(CHOSEN), {n: 0.7 for n in CHOSEN})
    before = {n: work.get_submodule(n).weight.detach().clone() for n in CHOSEN}
    cfg = PruneConfig(ratio=0.7, finetune_epochs=1, finetune_max_steps_per_epoch=5, finetune_lr=0.05)
    entry = finetune(out, cfg, digits_data)
    want = {n: removal_count(NUMEL[n], 0.7) for n in CHOSEN}
    assert want == {"features.1.0": 12902, "features.3.0": 51610, "features.5.0": 103219}
    for n in CHOSEN:
        w, keep = work.get_submodule(n).weight.detach(), out.masks[n]
        assert _zeros(work, n) == want[n]
        assert torch.equal(w == 0, ~keep)  # the very same weights, not just the same count
        assert not torch.equal(w[keep], before[n][keep])  # and the kept ones did train
    assert entry["sparsity"] == sum(want.values()) / sum(NUMEL.values())
    assert entry["epochs"] == 1 and 0.0 <= entry["val_acc"] <= 1.0 and not work.training

    # control: the same fine-tuning without masks regrows the pruned weights
    free = copy.deepcopy(out.model)
    finetune(Pruned(model=free), cfg, digits_data)
    assert _zeros(free, "features.5.0") < 0.01 * want["features.5.0"]


def _iterative(**kw) -> PruneConfig:
    # finetune_lr=0: no recovery, so accuracy falls with the ratio and the budget is crossed
    base = {"schedule": "iterative", "steps": 3, "finetune_epochs": 1, "finetune_lr": 0.0,
            "finetune_max_steps_per_epoch": 1, "finetune_augment": False}
    return PruneConfig(**(base | kw))


def test_iterative_stops_at_max_drop_keeps_the_last_cycle_within_it_and_resumes(
        digits_cnn, digits_data, tmp_path, monkeypatch):
    cfg = _iterative(ratio=0.98, max_drop=3.0)  # cycles at 0.327, 0.653, 0.98
    cycles = tmp_path / "cycles"
    res = prune(digits_cnn, cfg, digits_data, out_dir=cycles)
    h = res.history
    base = val_accuracy(digits_cnn, digits_data)
    assert h[0]["val_acc"] == base >= 0.95  # the unpruned model, on all 143 val images
    # measured: cycle 1 drops 0.70 points (1 of 143 images), cycle 2 drops 37.1 > 3
    assert [e["step"] for e in h] == [0, 1, 2]
    assert h[1]["ratio"] == round(0.98 / 3, 6) and h[1]["within_budget"] and h[1]["drop"] <= 3.0
    assert h[2]["ratio"] == round(0.98 * 2 / 3, 6) and not h[2]["within_budget"] and h[2]["drop"] > 3.0
    assert [e["result"] for e in h] == [False, True, False]
    assert h[2]["drop"] == pytest.approx(100 * (base - h[2]["val_acc"]), abs=1e-3)
    assert any("stopped at cycle 2 of 3" in w and "the result is cycle 1" in w for w in res.warnings)
    assert res.info["schedule"]["result_cycle"] == 1 and res.info["schedule"]["stopped"]
    for n in CHOSEN:  # the result is cycle 1, exactly
        assert _zeros(res.model, n) == removal_count(NUMEL[n], 0.98 / 3)
        assert torch.equal(res.model.edgeopt_masks[n], res.model.get_submodule(n).weight != 0)
    assert sorted(p.name for p in cycles.glob("cycle_*.safetensors")) == ["cycle_1.safetensors",
                                                                         "cycle_2.safetensors"]

    # a re-run finds the finished cycles and trains nothing
    def no_training(*a, **k):
        raise AssertionError("a finished cycle was run again")

    monkeypatch.setattr(sched, "finetune", no_training)
    again = prune(digits_cnn, cfg, digits_data, out_dir=cycles)
    assert again.history == h
    assert any("resumed iterative pruning after cycle 2 of 3" in w for w in again.warnings)
    for n in CHOSEN:
        assert torch.equal(again.model.get_submodule(n).weight, res.model.get_submodule(n).weight)
    with pytest.raises(ConfigError, match="another configuration"):
        prune(digits_cnn, cfg.replace(ratio=0.9), digits_data, out_dir=cycles)


def test_iterative_resumes_after_an_interrupted_cycle(digits_cnn, digits_data, tmp_path, monkeypatch):
    cfg = _iterative(ratio=0.6)
    real, calls = sched.finetune, []

    def dies_in_cycle_2(pruned, config, data, progress=False, **kw):
        calls.append(kw.get("seed"))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(pruned, config, data, progress, **kw)

    monkeypatch.setattr(sched, "finetune", dies_in_cycle_2)
    with pytest.raises(KeyboardInterrupt):
        prune(digits_cnn, cfg, digits_data, out_dir=tmp_path)
    assert [p.name for p in tmp_path.glob("cycle_*.json")] == ["cycle_1.json"]
    calls.clear()
    monkeypatch.setattr(sched, "finetune", lambda *a, **k: calls.append(k.get("seed")) or real(*a, **k))
    res = prune(digits_cnn, cfg, digits_data, out_dir=tmp_path)
    assert calls == [2, 3]  # cycles 2 and 3 only (seed = config.seed + cycle)
    assert [e["ratio"] for e in res.history] == [0.0, 0.2, 0.4, 0.6]
    assert [e["sparsity"] for e in res.history] == sorted(e["sparsity"] for e in res.history)
    for n in CHOSEN:
        assert _zeros(res.model, n) == removal_count(NUMEL[n], 0.6)  # 11059, 44237, 88474


def test_iterative_structured_prunes_the_pruned_model_further_and_cycles_reload(
        digits_cnn, digits_data, tmp_path):
    from edgeopt.models import load_checkpoint

    cfg = PruneConfig(method="structured", ratio=0.5, schedule="iterative", steps=2, finetune_epochs=1,
                      finetune_max_steps_per_epoch=3)
    res = prune(digits_cnn, cfg, digits_data, out_dir=tmp_path)
    c1, _ = load_checkpoint(tmp_path / "cycle_1")  # rebuilt from the architecture + record
    c2, _ = load_checkpoint(tmp_path / "cycle_2")
    assert {n: int(c1.get_submodule(n).weight.shape[0]) for n in CHOSEN} == {"features.1.0": 48, "features.3.0": 96, "features.5.0": 96}  # 25 % of 64, 128
    assert {r["name"]: r["channels_after"] for r in res.layers if r["name"] in CHOSEN} == {
        "features.1.0": 32, "features.3.0": 64, "features.5.0": 64}  # 50 % after cycle 2
    # the record is against the unpruned architecture, not the cycle-1 model
    assert res.model.edgeopt_prune_record["channels"]["features.1.0"] == [64, 32]
    params = [e["params"] for e in res.history]
    assert params[0] == res.params_before and params[-1] == res.params_after == 65834
    assert sum(p.numel() for p in c2.parameters()) == res.params_after
    assert res.history[0]["macs_ratio"] == 1.0
    assert res.history[2]["macs_ratio"] < res.history[1]["macs_ratio"] < 1.0  # measured 0.354, 0.640
    x, _ = digits_data.samples(32, split="val")
    with torch.no_grad():
        assert torch.allclose(c2(x), res.model(x), atol=1e-5)


def test_gradual_reaches_the_final_sparsity_exactly_along_the_cubic(digits_cnn, digits_data):
    cfg = PruneConfig(ratio=0.8, schedule="gradual", steps=5, finetune_epochs=4)
    res = prune(digits_cnn, cfg, digits_data)
    h = res.history
    # 4 epochs x 11 steps (1295 train images / 128): prune after 0, 7, 13, 20, 26 steps (<= 75 % of 44)
    assert [e["train_step"] for e in h] == [0, 0, 7, 13, 20, 26]
    assert res.info["schedule"]["plan"] == gradual_plan(5, 44)
    assert [e["ratio"] for e in h] == [0.0, 0.3904, 0.6272, 0.7488, 0.7936, 0.8]  # 0.8 (1 - (1 - j/5)^3)
    sparsity = [e["sparsity"] for e in h]
    assert all(a < b for a, b in itertools.pairwise(sparsity))  # strictly rising
    want = {n: removal_count(NUMEL[n], 0.8) for n in CHOSEN}
    assert want == {"features.1.0": 14746, "features.3.0": 58982, "features.5.0": 117965}
    for n in CHOSEN:
        assert _zeros(res.model, n) == want[n]
        assert torch.equal(res.model.edgeopt_masks[n], res.model.get_submodule(n).weight != 0)
    assert sparsity[-1] == sum(want.values()) / sum(NUMEL.values())
    assert all(e["val_acc"] is not None for e in h)
    # 80 % of the conv weights gone, recovered within 4 epochs (measured 0.972 val and test)
    assert h[-1]["val_acc"] >= 0.93 and _test_acc(res.model, digits_data) >= 0.93


def test_schedules_need_data_and_gradual_needs_masks(digits_cnn):
    with pytest.raises(ConfigError, match="pass data"):
        prune(digits_cnn, PruneConfig(schedule="gradual", finetune_epochs=1))
    with pytest.raises(ConfigError, match="gradual"):
        PruneConfig(method="structured", schedule="gradual", finetune_epochs=1)
    assert gradual_plan(4, 100) == [(0, 0.578125), (19, 0.875), (38, 0.984375), (56, 1.0)]
