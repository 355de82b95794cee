"""evaluate_variant: one row of results.json, every stage through the Runner."""

from __future__ import annotations

import pytest

from edgeopt.evaluate import (
    add_variant,
    count_macs,
    estimate_energy,
    evaluate_accuracy,
    load_results,
    new_results,
    save_results,
)


def test_variant_row_from_a_runner(synthetic_data, tiny_net, module_runner, tmp_path, capsys):
    runner = module_runner(tiny_net)
    row = evaluate_variant_quick(runner, synthetic_data, tiny_net, progress=True)
    err = capsys.readouterr().err
    assert "[fake torch] accuracy" in err and "[fake torch] macs" in err

    assert row["name"] == "fake torch" and row["runtime"] == "torch" and row["split"] == "test"
    direct = evaluate_accuracy(module_runner(tiny_net), synthetic_data)
    assert row["accuracy"]["top1"] == direct.top1 and row["accuracy"]["n"] == len(synthetic_data.test)
    b1, tp = row["latency"]["batch1"], row["latency"]["throughput"]
    assert b1["runs"] == 20 and b1["batch_size"] == 1 and b1["threads"] == 1
    assert tp["batch_size"] == 16 and tp["runs"] == 3
    assert row["macs"]["total_macs"] == 92_320
    n_params = sum(p.numel() for p in tiny_net.parameters())
    assert row["size"]["params"] == n_params == row["size"]["nonzero_params"]
    # fp32 energy from the same MACs and bytes
    macs = count_macs(tiny_net, synthetic_data.spec)
    expected = estimate_energy(macs.total_macs, macs.bytes_moved(4), "fp32")
    assert row["energy"]["total_uJ"] == pytest.approx(expected.total_uJ, rel=1e-12)
    assert row["memory"] is None and any(n.startswith("memory not measured") for n in row["notes"])

    results = new_results("unit", {})
    add_variant(results, row)  # validates the row against the schema
    p = save_results(tmp_path / "results.json", results)
    assert load_results(p)["variants"][0]["accuracy"]["top1"] == direct.top1


def test_failed_optional_stage_is_a_note(synthetic_data, tiny_net, module_runner):
    class NoBatch(module_runner):
        def predict(self, x):
            if len(x) > 1 and len(x) == 16:
                raise RuntimeError("this runtime only takes batch 1\nsecond line")
            return super().predict(x)

    row = evaluate_variant_quick(NoBatch(tiny_net), synthetic_data, tiny_net, accuracy_batch=1)
    assert row["latency"]["throughput"] is None
    assert any(n.startswith("throughput not measured: RuntimeError: this runtime only takes batch 1 second line")
               for n in row["notes"])


def test_nan_variant_raises(synthetic_data, tiny_net, module_runner):
    import numpy as np

    from edgeopt.errors import NumericalError

    class Broken(module_runner):
        def predict(self, x):
            return np.full((len(x), 10), np.nan, np.float32)

    with pytest.raises(NumericalError):
        evaluate_variant_quick(Broken(tiny_net), synthetic_data, tiny_net)


def evaluate_variant_quick(runner, data, model, **kw):
    from edgeopt.evaluate import evaluate_variant

    args = {"model": model, "latency_runs": 20, "latency_warmup": 2, "throughput_batch": 16,
            "throughput_runs": 3, "progress": False}
    args.update(kw)
    return evaluate_variant("fake torch", runner, data, **args)
