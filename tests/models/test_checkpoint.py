"""Checkpoints: round trip, sidecar contents, wrong architecture, corrupt and unsafe files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgeopt.errors import ModelLoadError, UnsupportedModelError
from edgeopt.models import (
    checkpoint_paths,
    create_model,
    list_models,
    load_checkpoint,
    load_weights_,
    read_sidecar,
    save_checkpoint,
)
from edgeopt.spec import ModelSpec

RGB32 = ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3, dataset="cifar10")
GREY8 = ModelSpec((1, 8, 8), 10, (0.5,), (0.25,), class_names=tuple("0123456789"), dataset="digits")


def _randomise_bn(model: nn.Module) -> None:
    # fresh BN stats are 0/1; make them non-trivial so the round trip really tests buffers
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("name", list_models())
def test_round_trip_identical(name, tmp_path):
    torch.manual_seed(0)
    spec = GREY8
    model = create_model(name, spec).eval()
    _randomise_bn(model)
    history = [{"epoch": 0, "loss": 2.3}, {"epoch": 1, "loss": 1.9}]
    path = save_checkpoint(
        tmp_path / "ckpt",
        model,
        history=history,
        metrics={"val_acc": 0.5},
        lineage=[{"step": "train"}],
    )
    assert path == tmp_path / "ckpt.safetensors" and path.is_file()
    loaded, side = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    x = spec.example_input(4)
    with torch.no_grad():
        diff = (model(x) - loaded(x)).abs().max().item()
    assert diff == 0.0
    assert side["format"] == "edgeopt_checkpoint" and side["format_version"] == 1
    assert side["arch"] == {"name": name, "kwargs": {}}
    assert side["spec"] == spec.to_dict()
    assert side["history"] == history and side["metrics"] == {"val_acc": 0.5}
    assert side["lineage"] == [{"step": "train"}]
    assert side["torch_version"] == torch.__version__
    assert loaded.edgeopt_spec == spec and loaded.edgeopt_arch == model.edgeopt_arch
    assert loaded.edgeopt_lineage == [{"step": "train"}]


def test_paths_with_and_without_suffix(tmp_path):
    m = create_model("simple_cnn", GREY8, dropout=0.1)
    p = save_checkpoint(tmp_path / "sub" / "run.v2.safetensors", m)
    assert p.name == "run.v2.safetensors" and (tmp_path / "sub" / "run.v2.json").is_file()
    for form in ("run.v2", "run.v2.safetensors", "run.v2.json"):
        m2, side = load_checkpoint(tmp_path / "sub" / form)
        assert side["arch"] == {"name": "simple_cnn", "kwargs": {"dropout": 0.1}}
        assert m2.dropout.p == 0.1
    assert [q.name for q in checkpoint_paths("a/b")] == ["b.safetensors", "b.json"]
    # no temporary files are left behind by the atomic writes
    assert sorted(q.name for q in (tmp_path / "sub").iterdir()) == [
        "run.v2.json",
        "run.v2.safetensors",
    ]


def test_kwargs_round_trip(tmp_path):
    m = create_model("mobilenetv2", GREY8, width_mult=0.5).eval()
    m2, side = load_checkpoint(save_checkpoint(tmp_path / "m", m))
    assert side["arch"]["kwargs"] == {"width_mult": 0.5}
    x = GREY8.example_input(2)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_tied_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # one tensor under two names

        def forward(self, x):
            return self.b(self.a(x))

    m = Tied()
    save_checkpoint(tmp_path / "tied", m)
    m2 = load_checkpoint(tmp_path / "tied", arch=Tied())[0]
    assert m2.a.weight is m2.b.weight
    x = torch.randn(3, 4)
    assert torch.equal(m(x), m2(x))


def test_non_contiguous_and_no_arch(tmp_path):
    m = nn.Linear(3, 5)
    with torch.no_grad():
        m.weight.set_(torch.randn(3, 5).t())  # a transposed view: not contiguous
    assert not m.weight.is_contiguous()
    save_checkpoint(tmp_path / "lin", m)
    with pytest.raises(ModelLoadError, match="records no architecture"):
        load_checkpoint(tmp_path / "lin")
    m2, side = load_checkpoint(tmp_path / "lin", arch=nn.Linear(3, 5))
    assert side["arch"] is None and torch.equal(m2.weight, m.weight)


def test_wrong_architecture_names_tensors(tmp_path):
    save_checkpoint(tmp_path / "r20", create_model("resnet20", RGB32))
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(tmp_path / "r20", arch="resnet56")
    msg = str(info.value)
    assert "resnet56" in msg and "missing 'layer1.3.conv1.weight' [16, 16, 3, 3]" in msg
    assert "more" in msg and "\n" not in msg
    # same architecture, other number of classes: the shape mismatch is named with shapes
    other = create_model("resnet20", ModelSpec((3, 32, 32), 100, (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(
        ModelLoadError, match=r"'fc.weight' is \[10, 64\] in the file but \[100, 64\]"
    ):
        load_weights_(other, tmp_path / "r20.safetensors")


def test_unexpected_keys_named(tmp_path):
    m = nn.Linear(2, 2)
    sd = {**m.state_dict(), "extra.weight": torch.zeros(1)}
    save_file(sd, str(tmp_path / "x.safetensors"))
    with pytest.raises(ModelLoadError, match=r"unexpected 'extra.weight' \[1\]"):
        load_weights_(nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_torch_files_are_accepted(tmp_path):
    src = create_model("resnet20", RGB32).eval()
    _randomise_bn(src)
    x = RGB32.example_input(2)
    with torch.no_grad():
        ref = src(x)
    for i, obj in enumerate(
        [
            src.state_dict(),
            {"state_dict": src.state_dict(), "epoch": 3},
            {"model": {f"module.{k}": v for k, v in src.state_dict().items()}},  # DDP prefix
        ]
    ):
        p = tmp_path / f"w{i}.pth"
        torch.save(obj, p)
        dst = load_weights_(create_model("resnet20", RGB32).eval(), p)
        with torch.no_grad():
            assert torch.equal(dst(x), ref)


@pytest.fixture
def saved(tmp_path):
    save_checkpoint(tmp_path / "good", create_model("simple_cnn", GREY8))
    return tmp_path / "good.safetensors"


def test_missing_files(tmp_path, saved):
    with pytest.raises(ModelLoadError, match="not found"):
        load_checkpoint(tmp_path / "nothere")
    with pytest.raises(ModelLoadError, match="weights file not found"):
        load_weights_(nn.Linear(1, 1), tmp_path / "nothere.pt")
    (tmp_path / "good.json").unlink()
    with pytest.raises(ModelLoadError, match="sidecar not found.*load_weights_"):
        load_checkpoint(saved)


def test_foreign_sidecar(tmp_path, saved):
    (tmp_path / "good.json").write_text(json.dumps({"some": "other tool"}))
    with pytest.raises(ModelLoadError, match="not an edgeopt checkpoint sidecar"):
        load_checkpoint(saved)
    (tmp_path / "good.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        read_sidecar(saved)


def test_truncated_safetensors(tmp_path, saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_weights_(create_model("simple_cnn", GREY8), saved)
    with pytest.raises(ModelLoadError):
        load_checkpoint(saved)


def test_changed_weights_detected_by_hash(tmp_path, saved):
    data = bytearray(saved.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last float: still a valid safetensors file
    saved.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_checkpoint(saved)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"hello, I am a text file\n" * 10])
def test_foreign_bytes(tmp_path, suffix, content):
    p = tmp_path / f"foreign{suffix}"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load_weights_(nn.Linear(2, 2), p)


def test_truncated_torch_file(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(nn.Linear(64, 64).state_dict(), p)
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(ModelLoadError, match="corrupt or truncated PyTorch file"):
        load_weights_(nn.Linear(64, 64), p)


def test_file_without_state_dict(tmp_path):
    p = tmp_path / "w.pt"
    torch.save({"epoch": 3, "lr": 0.1}, p)
    with pytest.raises(ModelLoadError, match="holds no state_dict"):
        load_weights_(nn.Linear(2, 2), p)


class _Evil:
    """Pickles to a call that writes a marker file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_pickle_refused(tmp_path, how):
    marker = tmp_path / "pwned.txt"
    p = tmp_path / "evil.pt"
    payload = {"state_dict": {"weight": _Evil(marker)}}
    if how == "torch.save":
        torch.save(payload, p)
    else:
        with open(p, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    with pytest.raises(ModelLoadError, match="refused") as info:
        load_weights_(nn.Linear(2, 2), p)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_malicious_pickle_message_never_advises_weights_only_false(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {"weight": _Evil(tmp_path / "pwned.txt")}}, p)
    with pytest.raises(ModelLoadError) as info:
        load_weights_(nn.Linear(2, 2), p)
    msg = str(info.value)
    assert msg.startswith(f"refused to load {p} for safety: it is not a plain weights file")
    assert "loading it needs exec," in msg and "\n" not in msg
    assert "weights_only=False" not in msg and "safe_globals" not in msg


def test_a_pickle_renamed_safetensors_is_one_line(tmp_path):
    """torch.load reads any *.safetensors path as safetensors: a torch.save file renamed so
    failed with safetensors' "header too large" traceback (issue 9)."""
    p = tmp_path / "x.safetensors"
    torch.save({"a": torch.zeros(2)}, p)
    with pytest.raises(ModelLoadError, match=r"is not a safetensors file: it is a PyTorch "
                       r"torch.save file \(a pickle\).*edgeopt import") as info:
        load_weights_(nn.Linear(2, 2), p)
    assert "header too large" not in str(info.value) and "\n" not in str(info.value)
    # the same bytes named .pt load (weights only): the kind comes from the bytes
    torch.save(nn.Linear(2, 2).state_dict(), p)
    p.rename(tmp_path / "x.pt")
    assert load_weights_(nn.Linear(2, 2), tmp_path / "x.pt").weight.shape == (2, 2)


def test_a_pickle_renamed_safetensors_beside_a_valid_sidecar(tmp_path):
    import hashlib

    ckpt = save_checkpoint(tmp_path / "m", create_model("simple_cnn", GREY8))
    torch.save(create_model("simple_cnn", GREY8).state_dict(), ckpt)  # same name, pickle bytes
    side = json.loads(ckpt.with_suffix(".json").read_text())
    side["sha256"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()  # the sidecar vouches for it
    ckpt.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(ModelLoadError, match="is not a safetensors file"):
        load_checkpoint(ckpt)


def test_torchvision_mnasnet_round_trips(tmp_path):
    """MNASNet's _load_from_state_dict needs the module version (state_dict._metadata), which
    safetensors does not store: loading failed with "version should be set to 1 or 2"."""
    spec = ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = create_model("tv:mnasnet0_5", spec).eval()
    _randomise_bn(model)
    path = save_checkpoint(tmp_path / "mnas", model)
    loaded, _ = load_checkpoint(path, arch=create_model("tv:mnasnet0_5", spec))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    # a torch file keeps its own versions (saved with the state_dict)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "mnas.pt")
    again = load_weights_(create_model("tv:mnasnet0_5", spec), tmp_path / "mnas.pt").eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_non_tensor_state_is_not_a_checkpoint(tmp_path):
    class WithExtraState(nn.Linear):
        def get_extra_state(self):
            return {"calibrated": True}  # a non-tensor entry in the state_dict

        def set_extra_state(self, state):
            pass

    with pytest.raises(UnsupportedModelError, match="export"):
        save_checkpoint(tmp_path / "x", WithExtraState(2, 2))
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.filterwarnings("ignore")
def test_quantized_tensor_is_not_a_checkpoint(tmp_path):
    m = nn.Module()
    try:
        q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    except (AttributeError, RuntimeError):  # pragma: no cover - removed in a future torch
        pytest.skip("this torch has no quantized tensors")
    m.register_buffer("q", q)
    with pytest.raises(UnsupportedModelError, match="quantized tensor 'q'"):
        save_checkpoint(tmp_path / "q", m)
    assert not list(tmp_path.iterdir())


def test_save_killed_between_renames_still_loads_the_new_weights(tmp_path):
    """A kill after the weights rename but before the sidecar rename leaves a stale sidecar."""
    import shutil

    from edgeopt.models import create_model, load_checkpoint, save_checkpoint
    from edgeopt.spec import ModelSpec

    spec = ModelSpec((1, 8, 8), 10, (0.5,), (0.25,))
    old = save_checkpoint(tmp_path / "ck", create_model("simple_cnn", spec), metrics={"v": 1})
    stale_json = (tmp_path / "ck.json").read_text()
    torch.manual_seed(1)
    new_model = create_model("simple_cnn", spec)
    save_checkpoint(tmp_path / "new", new_model, metrics={"v": 2})
    shutil.copy(tmp_path / "new.safetensors", old)  # new weights ...
    (tmp_path / "ck.json").write_text(stale_json)  # ... beside the previous sidecar
    model, side = load_checkpoint(old)
    assert side["metrics"] == {"v": 2}
    x = spec.example_input(4)
    assert torch.equal(model(x), new_model.eval()(x))


def test_check_finite_weights_names_the_tensor_and_allows_mask_buffers():
    from edgeopt.errors import NumericalError
    from edgeopt.models.weights import check_finite_weights

    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    m.register_buffer("mask", torch.tensor([0.0, float("-inf")]))  # -inf on purpose: accepted
    check_finite_weights(m, "export")
    m[1].running_var[1] = float("inf")  # a broken batch-norm statistic is not
    with pytest.raises(NumericalError, match=r"^cannot export: tensor '1.running_var' \[2\] holds 0 NaN and 1 Inf"):
        check_finite_weights(m, "export")
    m[1].running_var[1] = 1.0
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match=r"tensor '0.weight' \[2, 2\] holds 1 NaN and 0 Inf of 4 values"):
        check_finite_weights(m, "export")
