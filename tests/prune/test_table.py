"""Sparsity tables: accepted headers (removed vs kept), YAML/CSV round trips, template,
and names checked against the model with near-name errors."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import ConfigError
from edgeopt.models import create_model
from edgeopt.prune import PruneConfig, prune
from edgeopt.prune.table import (
    KEPT_HEADERS,
    read_sparsity_table,
    template,
    write_sparsity_table,
)


@pytest.mark.parametrize("header", ["sparsity", "ratio", "prune_ratio", "pruning_ratio", "pruned"])
def test_csv_with_a_removed_header_reads_the_values_as_sparsity(tmp_path, header):
    p = tmp_path / "t.csv"
    p.write_text(f"layer,{header}\nconv1,0.3\nfc,25%\n")
    assert read_sparsity_table(p) == {"conv1": 0.3, "fc": 0.25}


@pytest.mark.parametrize("header", KEPT_HEADERS)
def test_csv_with_a_kept_header_reads_one_minus_the_values(tmp_path, header):
    # the Edge-AI repository's tables give the fraction of weights KEPT
    p = tmp_path / "t.csv"
    p.write_text(f"name,{header.upper()}\nconv1,0.3\nfc,100%\nlayer2.0.conv1,0.125\n")
    assert read_sparsity_table(p) == {"conv1": 0.7, "fc": 0.0, "layer2.0.conv1": 0.875}


def test_csv_comments_extra_columns_and_a_bom_are_accepted(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("\ufeff# from a spreadsheet\nlayer,sparsity,note\n# protected\nconv1,0.0,first\n\nfc,0.5,\n",
                 encoding="utf-8")
    assert read_sparsity_table(p) == {"conv1": 0.0, "fc": 0.5}


def test_an_unknown_csv_header_is_one_line_listing_the_accepted_headers(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("layer,amount\nconv1,0.5\n")
    with pytest.raises(ConfigError) as e:
        read_sparsity_table(p)
    msg = str(e.value)
    assert "\n" not in msg and "'layer,amount'" in msg
    for h in ("sparsity", "kept", "keep_ratio", "density"):
        assert h in msg


@pytest.mark.parametrize("text, words", [
    ("layer,sparsity\nconv1,1.0\n", ["row 2", "must be in [0, 1)"]),        # would remove every weight
    ("layer,kept\nconv1,0\n", ["kept fraction 0.0", "(0, 1]"]),            # keeps nothing
    ("layer,kept\nconv1,1.5\n", ["kept fraction 1.5"]),
    ("layer,sparsity\nconv1,half\n", ["row 2", "'half' is not a number"]),
    ("layer,sparsity\nconv1,0.5\nfc,0.1\nconv1,0.2\n", ["row 4", "'conv1' is already given in row 2"]),
    ("layer,sparsity\n", []),
])
def test_bad_rows_are_one_line_errors_naming_the_row(tmp_path, text, words):
    p = tmp_path / "t.csv"
    p.write_text(text)
    if not words:  # a header alone is an empty table, not an error
        assert read_sparsity_table(p) == {}
        return
    with pytest.raises(ConfigError) as e:
        read_sparsity_table(p)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_yaml_and_json_round_trip_names_that_look_like_numbers(tmp_path):
    table = {"0": 0.5, "1.0": 0.25, "features.3.0": 0.7, "re:.*conv.*": 0.1}
    for suffix in (".yaml", ".yml", ".json", ".csv"):
        p = write_sparsity_table(tmp_path / f"t{suffix}", table)
        assert read_sparsity_table(p) == table
    assert (tmp_path / "t.yaml").read_text().splitlines()[0] == '"0": 0.5'  # quoted: not the int 0


def test_yaml_may_say_the_values_are_kept(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("kept:\n  conv1: 0.2\n  fc: 0.9\n")
    assert read_sparsity_table(p) == {"conv1": 0.8, "fc": 0.1}
    q = tmp_path / "r.yaml"
    q.write_text("layer_ratios: {conv1: 0.2}\n")
    assert read_sparsity_table(q) == {"conv1": 0.2}
    bad = tmp_path / "b.yaml"
    bad.write_text("- conv1\n- fc\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_sparsity_table(bad)


def test_unknown_extensions_and_missing_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown extension '.txt'"):
        write_sparsity_table(tmp_path / "t.txt", {"a": 0.5})
    with pytest.raises(ConfigError, match="not found"):
        read_sparsity_table(tmp_path / "none.csv")
    with pytest.raises(ConfigError, match="must be in"):
        write_sparsity_table(tmp_path / "t.csv", {"a": 1.0})


def test_template_lists_every_prunable_layer_and_reads_back(tmp_path, digits_data):
    model = create_model("simple_cnn", digits_data.spec)
    text = template(model, PruneConfig(ratio=0.6, layer_ratios={"features.5.0": 0.8}))
    assert text.splitlines() == [
        '"features.0.0": 0.0  # protected (first layer): not pruned',
        '"features.1.0": 0.6',
        '"features.3.0": 0.6',
        '"features.5.0": 0.8',
        '"fc": 0.0  # protected (last layer): not pruned',
    ]
    p = template(model, PruneConfig(ratio=0.5, include=("features.3.0",), exclude=("features.5.0",)),
                 tmp_path / "tpl.csv")
    lines = p.read_text().splitlines()
    assert "# features.1.0: not in include: not pruned" in lines
    assert "# features.5.0: protected (excluded): not pruned" in lines
    assert read_sparsity_table(p) == {"features.0.0": 0.0, "features.1.0": 0.0, "features.3.0": 0.5,
                                      "features.5.0": 0.0, "fc": 0.0}
    # the template feeds pruning unchanged: every chosen layer loses round(0.5 * numel) weights
    res = prune(model, PruneConfig(ratio=0.0, layer_ratios=read_sparsity_table(p)))
    zeros = int((res.model.get_submodule("features.3.0").weight == 0).sum())
    assert zeros == round(0.5 * 73728) == 36864
    assert int((res.model.get_submodule("features.1.0").weight == 0).sum()) == 0


def test_a_table_naming_a_missing_layer_is_one_line_with_near_names(tmp_path, digits_data):
    model = create_model("simple_cnn", digits_data.spec)
    p = tmp_path / "t.csv"
    p.write_text("layer,sparsity\nfeatures.3.1,0.5\n")
    with pytest.raises(ConfigError) as e:
        prune(model, PruneConfig(layer_ratios=read_sparsity_table(p)))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("sparsity table: layer 'features.3.1' does not exist in the model; nearest: ")
    assert msg.split("nearest: ")[1].split(", ")[0] == "features.3.0"
    # a module name names the layers inside it (the pattern rule of PruneConfig.include)
    p.write_text("layer,kept\nfeatures.3,0.25\n")
    res = prune(model, PruneConfig(ratio=0.0, layer_ratios=read_sparsity_table(p)))
    assert int((res.model.get_submodule("features.3.0").weight == 0).sum()) == round(0.75 * 73728) == 55296
    assert json.loads(json.dumps(res.to_dict()["config"]["layer_ratios"])) == {"features.3": 0.75}
