"""`edgeopt prune` and `edgeopt scan --prune` on a checkpoint trained on real digits."""

from __future__ import annotations

import pytest
import torch
from _cli import one_line, run_cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, digits_cnn):
    from edgeopt.models import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("prune_cli") / "cnn", digits_cnn)


def _acc(model, data) -> float:
    x, y = data.samples(10_000, split="test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_unstructured_prune_writes_dense_and_sparse_files_with_exact_sparsity(capsys, ckpt, tmp_path, digits_data):
    from edgeopt.models import load_checkpoint

    out = tmp_path / "u50.safetensors"
    code, stdout, err = run_cli(capsys, "prune", ckpt, "--method", "unstructured", "--ratio", "0.5",
                                "--out", out, "--no-eval")
    assert code == 0, err
    model, side = load_checkpoint(out)
    step = side["lineage"][-1]
    assert step["step"] == "prune" and step["method"] == "unstructured"
    pr = side["extra"]["pruning"]
    for row in pr["layers"]:
        if row["protected"] is None:  # each pruned layer holds exactly half zeros
            w = model.get_submodule(row["name"]).weight
            assert int((w == 0).sum()) == round(0.5 * w.numel())
    assert (tmp_path / "u50.sparse.safetensors").is_file()
    assert (tmp_path / "u50.sparse-int8.safetensors").is_file()
    assert "sparse" in stdout and "wrote" in stdout


def test_structured_prune_reloads_with_the_claimed_counts_and_exports(capsys, ckpt, tmp_path, digits_data):
    from edgeopt.evaluate.macs import count_macs
    from edgeopt.models import load_checkpoint

    out = tmp_path / "s50.safetensors"
    code, _, err = run_cli(capsys, "prune", ckpt, "--method", "structured", "--ratio", "0.5",
                           "--finetune-epochs", "2", "--out", out, "--no-eval", "--json")
    assert code == 0, err
    model, side = load_checkpoint(out)
    pr = side["extra"]["pruning"]
    assert sum(p.numel() for p in model.parameters()) == pr["params_after"] < pr["params_before"]
    assert count_macs(model).total_macs == pr["macs_after"] < pr["macs_before"]
    assert _acc(model, digits_data) >= 0.90  # 2 recovery epochs on digits
    code, stdout, err = run_cli(capsys, "export", out, "--to", "onnx", "--out", tmp_path / "s50.onnx")
    assert code == 0 and "top-1 agreement 100.00%" in stdout, err


def test_a_table_naming_a_missing_layer_is_one_line_with_near_names(capsys, ckpt, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("layer,sparsity\nfeatures.9,0.5\n")
    code, _, err = run_cli(capsys, "prune", ckpt, "--table", table, "--out", tmp_path / "x", "--no-eval")
    line = one_line(err)
    assert code == 2 and "does not exist" in line and "features." in line


def test_scan_table_prune_recover_on_digits(capsys, ckpt, tmp_path, digits_data):
    from edgeopt.models import load_checkpoint

    scan_dir = tmp_path / "scan"
    code, _, err = run_cli(capsys, "scan", ckpt, "--prune", "--sparsities", "0.5,0.8", "--samples", "200",
                           "--out-dir", scan_dir, "--json")
    assert code == 0, err
    table = next(p for p in scan_dir.iterdir() if p.name.endswith((".csv", ".yaml")) and "table" in p.name)
    out = tmp_path / "from_table.safetensors"
    code, _, err = run_cli(capsys, "prune", ckpt, "--table", table, "--ratio", "0", "--finetune-epochs", "2",
                           "--out", out, "--no-eval")
    assert code == 0, err
    model, side = load_checkpoint(out)
    assert _acc(model, digits_data) >= 0.93
