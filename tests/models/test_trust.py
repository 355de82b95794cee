"""Files never run code: a sidecar or config may name zoo and tv: models, but a
``package.module:factory`` runs only when the user allows it (edgeopt.models.trust)."""

from __future__ import annotations

import json

import pytest
import torch

from edgeopt.errors import ModelLoadError, UntrustedCodeError
from edgeopt.models import create_model, load_checkpoint, save_checkpoint
from edgeopt.models.trust import (
    allow_model_code,
    check_model_code,
    is_model_code_allowed,
    trusted_env,
    trusted_model_code,
)
from edgeopt.spec import ModelSpec

SPEC = ModelSpec((1, 8, 8), 10, (0.5,), (0.25,), dataset="digits")


def _with_arch(tmp_path, arch) -> str:
    """A real checkpoint whose sidecar's arch was replaced (weights untouched)."""
    p = save_checkpoint(tmp_path / "m", create_model("simple_cnn", SPEC))
    side = tmp_path / "m.json"
    d = json.loads(side.read_text())
    d["arch"] = arch
    side.write_text(json.dumps(d))
    return str(p)


def test_a_sidecar_naming_os_system_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _with_arch(tmp_path, {"name": "os:system", "kwargs": {"command": "touch PWNED"}})
    with pytest.raises(UntrustedCodeError, match="asks to import and run 'os:system'.*--trust-model-code"):
        load_checkpoint(p)
    assert not (tmp_path / "PWNED").exists()


def test_zoo_and_torchvision_names_need_no_trust():
    check_model_code("resnet20", "x.json")
    check_model_code("tv:resnet18", "x.json")


def test_allowing_by_name_prefix_env_and_context(monkeypatch):
    assert not is_model_code_allowed("my_pkg.nets:build")
    allow_model_code("my_pkg.nets:build")
    assert is_model_code_allowed("my_pkg.nets:build") and not is_model_code_allowed("my_pkg.nets:other")
    monkeypatch.setenv("EDGEOPT_TRUSTED_MODULES", "other_pkg, third.sub")
    assert is_model_code_allowed("other_pkg.x.y:f") and is_model_code_allowed("third.sub:f")
    assert not is_model_code_allowed("third:f") and not is_model_code_allowed("other_pkgx:f")
    with trusted_model_code():
        assert is_model_code_allowed("anything:f")
    assert not is_model_code_allowed("anything:f")
    # a child process (the memory probe) inherits what this one allowed
    env = trusted_env({})
    assert set(env["EDGEOPT_TRUSTED_MODULES"].split(",")) == {"my_pkg.nets:build", "other_pkg", "third.sub"}


@pytest.mark.parametrize(
    "arch, says",
    [
        ("simple_cnn", "is str"),
        ({"name": 5}, "has no model name"),
        ({"name": "simple_cnn", "kwargs": [1, 2]}, "kwargs of type list"),
        ({"kwargs": {}}, "has no model name"),
    ],
)
def test_a_malformed_arch_is_one_line(tmp_path, arch, says):
    p = _with_arch(tmp_path, arch)
    with pytest.raises(ModelLoadError, match=says) as exc:
        load_checkpoint(p)
    assert "\n" not in exc.value.one_line()


def test_recorded_arguments_a_model_refuses_are_one_line(tmp_path):
    p = _with_arch(tmp_path, {"name": "simple_cnn", "kwargs": {"dropout": 7}})
    with pytest.raises(ModelLoadError, match="refused dropout=7.*between 0 and 1"):
        load_checkpoint(p)
    p = _with_arch(tmp_path, {"name": "simple_cnn", "kwargs": {"nonsense": 1}})
    with pytest.raises(ModelLoadError, match="takes no argument"):
        load_checkpoint(p)


def test_a_trusted_or_named_factory_loads(tmp_path, monkeypatch):
    pkg = tmp_path / "trustme"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import torch\n"
        "def build(num_classes, in_channels):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 64, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)  # not on sys.path: found in the working directory, as `python -m` would
    m = create_model("trustme:build", SPEC).eval()  # a Python call names it: allowed
    p = save_checkpoint(tmp_path / "t", m)
    with pytest.raises(UntrustedCodeError):
        load_checkpoint(p)
    x = SPEC.example_input(3)
    for kwargs in ({"trust_model_code": True}, {"arch": "trustme:build"}):
        m2, _ = load_checkpoint(p, **kwargs)
        assert torch.equal(m(x), m2(x))
    monkeypatch.setenv("EDGEOPT_TRUSTED_MODULES", "trustme")
    m3, _ = load_checkpoint(p)
    assert torch.equal(m(x), m3(x))
