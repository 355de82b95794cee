"""Recipes validate before any work: every shipped recipe, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt.errors import ConfigError
from edgeopt.recipe import load_recipe, parse_recipe, plan

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_the_course_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"demo", "workshop", "workshop-fmnist", "week2", "edge-ai", "labs-resnet-int8",
            "labs-mnist-distill"} <= names, names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    r = load_recipe(path)
    assert r.variants, "a recipe without variants compares nothing"
    for steps in r.variants.values():
        assert steps


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_a_bad_step_value_names_the_file_line_and_key(tmp_path):
    p = _write(tmp_path, "data: {name: digits}\nbaseline:\n  train: {epochs: 1}\nvariants:\n  small:\n"
                         "    - prune:\n        method: structured\n        ratio: 1.5\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:8: variants.small[0].prune.ratio:"), msg
    assert "PruneConfig.ratio=1.5" in msg


def test_an_unknown_step_lists_the_steps(tmp_path):
    p = _write(tmp_path, "data: {name: digits}\nbaseline: {train: {epochs: 1}}\nvariants:\n  a: [shrink]\n")
    with pytest.raises(ConfigError, match=r"r.yaml:4: variants.a\[0\]: unknown step 'shrink'; steps: .*prune"):
        load_recipe(p)


def test_unknown_top_level_key_and_duplicate_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r":2: varients: unknown key"):
        load_recipe(_write(tmp_path, "data: {name: digits}\nvarients: {}\n"))
    with pytest.raises(ConfigError, match=r":3: variants.a is given twice \(first at line 2\)"):
        load_recipe(_write(tmp_path, "variants:\n  a: [quantize]\n  a: [export]\n"))


def test_a_terminal_step_must_be_last_and_train_first():
    base = {"data": {"name": "digits"}, "baseline": {"train": {"epochs": 1}}}
    with pytest.raises(ConfigError, match=r"variants.a\[0\].quantize: quantize makes the deployed file"):
        parse_recipe({**base, "variants": {"a": [{"quantize": {}}, {"prune": {}}]}})
    with pytest.raises(ConfigError, match="must be the first step"):
        parse_recipe({**base, "variants": {"a": [{"prune": {}}, {"train": {}}]}})


def test_quantize_then_export_makes_one_int8_file_per_format():
    r = parse_recipe({"data": {"name": "digits"}, "baseline": {"train": {"epochs": 1}},
                      "variants": {"a": [{"quantize": {}}, {"export": {"formats": ["onnx", "tflite"]}}]}})
    (q,) = r.variants["a"]
    assert [c["backend"] for c in q.config.options["configs"]] == ["onnxruntime", "litert"]
    with pytest.raises(ConfigError, match="int8 export to coreml is not supported"):
        parse_recipe({"data": {"name": "digits"}, "baseline": {"train": {"epochs": 1}},
                      "variants": {"a": [{"quantize": {}}, {"export": {"formats": ["coreml"]}}]}})


def test_constraints_are_validated_with_the_recipe():
    with pytest.raises(ConfigError, match=r"constraints"):
        parse_recipe({"data": {"name": "digits"}, "baseline": {"train": {"epochs": 1}},
                      "constraints": {"max_latency": 2}, "variants": {"a": ["quantize"]}})


def test_variants_with_a_common_prefix_share_its_steps(tmp_path):
    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml")
    p = {v["variant"]: v["steps"] for v in plan(r, tmp_path)}
    assert p["pruned 50 + int8"][0]["key"] == p["pruned 50"][0]["key"]
    assert p["pruned 50 + int8"][0]["shared_with"] == "pruned 50"
    assert p["pruned 50"][0]["shared_with"] is None
    assert p["int8"][0]["key"] != p["int8 torch"][0]["key"]
    assert not any(s["cached"] for steps in p.values() for s in steps)


def test_only_keeps_the_named_variants_and_refuses_unknown_ones():
    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml")
    assert list(r.only(["int8"]).variants) == ["int8"]
    with pytest.raises(ConfigError, match="--only: no variant 'nope'.*variants: int8"):
        r.only(["nope"])


def test_a_recipe_cannot_make_edgeopt_import_code(tmp_path):
    from edgeopt.errors import UntrustedCodeError

    base = "data: {name: digits}\nbaseline: {train: {epochs: 1}}\n"
    for variant in ("[distill: {student: 'os:system'}]",
                    "[distill: {student: cnn_student, method: progressive, assistants: ['os:system']}]"):
        p = _write(tmp_path, base + f"variants:\n  s: {variant}\n")
        with pytest.raises(UntrustedCodeError, match="asks to import and run 'os:system'"):
            load_recipe(p)
    p = _write(tmp_path, "data: {name: digits}\nbaseline: {model: {name: 'os:system'}, train: {epochs: 1}}\n"
                         "variants: {}\n")
    r = load_recipe(p)  # the baseline's model is checked where it is built, before any import
    from edgeopt.recipe import run_recipe

    with pytest.raises(UntrustedCodeError):
        run_recipe(r, out_dir=tmp_path / "out", progress=False)
