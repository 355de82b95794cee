"""edgeopt import: foreign state_dicts in, edgeopt checkpoints out (issue 9, item 3)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.cli import main
from edgeopt.errors import ConfigError, ModelLoadError
from edgeopt.models import load_checkpoint
from edgeopt.models.importing import ImportConfig, import_weights, read_state_dict


# --- a CIFAR ResNet in the common public "option A" layout (zero-padding shortcuts), -------
# --- written here from the paper, as third-party code would be ------------------------------
class _Pad(nn.Module):
    def __init__(self, planes: int) -> None:
        super().__init__()
        self.planes = planes

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4))


class _Block(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _Pad(planes) if (stride != 1 or cin != planes) else nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class OptionAResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, layers = 16, []
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(_Block(cin, planes, 2 if (i and not j) else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters, so an identity BN would not hide errors."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture
def option_a_th(tmp_path):
    """resnet20 in option A with random weights, saved as the public .th files are: a legacy
    (non-zip) torch file holding {'state_dict': {'module.conv1.weight': ...}, 'best_prec1': ...}."""
    torch.manual_seed(0)
    src = OptionAResNet(3).eval()
    _randomise_bn(src)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "resnet20.th"
    torch.save({"state_dict": state, "best_prec1": 91.73, "epoch": 199}, path, _use_new_zipfile_serialization=False)
    return src, path


def test_cli_imports_an_option_a_resnet20_with_logits_equal_to_the_source(capsys, tmp_path, option_a_th):
    src, path = option_a_th
    out = tmp_path / "r20"
    code = main(["import", str(path), "--model", "resnet20", "--preset", "imagenet", "--input-size", "32",
                 "--classes", "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck",
                 "--out", str(out), "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["missing"] == [] and rep["unexpected"] == [] and rep["mismatched"] == []
    assert any("option-A zero-padding shortcut" in c for c in rep["converted"])
    model, side = load_checkpoint(out)
    assert side["lineage"][0]["step"] == "import" and len(side["lineage"][0]["sha256"]) == 64
    spec = model.edgeopt_spec
    assert spec.input_shape == (3, 32, 32) and spec.mean == (0.485, 0.456, 0.406) and spec.class_names[0] == "airplane"
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = src(x), model(x)
    assert float((ref - got).abs().max()) <= 1e-5, float((ref - got).abs().max())
    assert ref.abs().max() > 0.1  # a real comparison, not of two zero vectors


def test_every_cifar_resnet_depth_converts_exactly(option_a_th, tmp_path):
    for n, name in ((5, "resnet32"), (7, "resnet44")):
        torch.manual_seed(n)
        src = OptionAResNet(n).eval()
        _randomise_bn(src, n)
        p = tmp_path / f"{name}.pth"
        torch.save({"model": src.state_dict()}, p)
        rep = import_weights(p, tmp_path / name, ImportConfig(model=name, preset="cifar10"))
        model, _ = load_checkpoint(rep.path)
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            assert float((src(x) - model(x)).abs().max()) <= 1e-5


def test_weights_that_do_not_fit_are_one_line_or_reported(option_a_th, tmp_path):
    _, path = option_a_th
    with pytest.raises(ModelLoadError, match=r"does not fit 'resnet56' \(\d+ missing.*--no-strict"):
        import_weights(path, tmp_path / "x", ImportConfig(model="resnet56", preset="cifar10", convert="none"))
    rep = import_weights(path, tmp_path / "y", ImportConfig(model="resnet20", preset="cifar10", num_classes=10,
                                                            convert="none", strict=False))
    assert "linear.weight" in rep.unexpected and "fc.weight" in rep.missing
    assert any(k.startswith("layer2.0.shortcut.0.weight") for k in rep.missing)
    side = json.loads((tmp_path / "y.json").read_text())
    assert side["extra"]["import"]["missing"] == rep.missing


def test_preprocessing_must_be_said(option_a_th, tmp_path):
    _, path = option_a_th
    with pytest.raises(ConfigError, match="say how the model's inputs were normalised"):
        import_weights(path, tmp_path / "x", ImportConfig(model="resnet20", num_classes=10, input_size=(32,)))


def test_a_pickle_with_code_is_refused_without_running(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("PWNED",))

    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, p)
    code = main(["import", str(p), "--model", "simple_cnn", "--preset", "cifar10"])
    out, err = capsys.readouterr()
    assert code == 2 and "PWNED" not in out and err.startswith("ModelLoadError: refused to load")
    assert "weights_only=False" not in err


def test_read_state_dict_unnests_and_keeps_only_tensors(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"model_state_dict": {"a": torch.ones(2)}, "optimizer": {"lr": 0.1}}, p)
    assert list(read_state_dict(p)) == ["a"]


def test_commands_given_a_foreign_file_say_import_it_first(capsys, option_a_th):
    _, path = option_a_th
    for cmd in ("quantize", "eval", "export"):
        code = main([cmd, str(path)])
        _, err = capsys.readouterr()
        assert code == 2 and "is not an edgeopt checkpoint" in err and "edgeopt import" in err, (cmd, err)


def test_check_measures_accuracy_with_the_models_own_preprocessing(tmp_path, digits_cnn):
    from edgeopt.models import save_checkpoint

    # a digits model saved as a bare state_dict with module. prefixes, as DDP code writes it
    p = tmp_path / "digits.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in digits_cnn.state_dict().items()}}, p)
    spec = digits_cnn.edgeopt_spec
    rep = import_weights(p, tmp_path / "d", ImportConfig(model="simple_cnn", data="digits", mean=spec.mean,
                                                         std=spec.std), check=True)
    assert rep.accuracy_samples == 359 and rep.accuracy >= 0.95
    save_checkpoint  # noqa: B018  (imported for symmetry with the other tests)


def test_an_onnx_file_from_elsewhere_becomes_an_artifact_fed_its_own_preprocessing(tmp_path, digits_cnn, capsys):
    import onnx

    from edgeopt.artifact import Artifact, sidecar_path
    from edgeopt.export import export_model

    # an ONNX file as another tool writes it: no sidecar, no edgeopt metadata
    exp = export_model(digits_cnn, "onnx", tmp_path / "exp.onnx", verify=False)
    proto = onnx.load(str(exp.artifact.path))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    spec = digits_cnn.edgeopt_spec
    code = main(["import", str(foreign), "--data", "digits", "--mean", str(spec.mean[0]), "--std", str(spec.std[0]),
                 "--check", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads(out)
    assert rep["accuracy_samples"] == 359 and rep["accuracy"] >= 0.95
    assert sidecar_path(foreign).is_file()
    art = Artifact.load(foreign)
    assert art.spec.mean == spec.mean and art.spec.class_names == spec.class_names and art.spec.dataset == "digits"
    assert art.meta["lineage"][0]["step"] == "import"
    # eval then needs no --data and uses the recorded statistics
    code = main(["eval", str(foreign), "--no-memory", "--runs", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["accuracy"]["top1"] == pytest.approx(rep["accuracy"])


def test_a_torchvision_mnasnet_state_dict_imports(tmp_path):
    """MNASNet refuses a state_dict without module versions; import gives it the model's own."""
    from edgeopt.models import create_model
    from edgeopt.spec import ModelSpec

    spec = ModelSpec((3, 32, 32), 10, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    src = create_model("tv:mnasnet0_5", spec).eval()
    p = tmp_path / "mnasnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, p)
    rep = import_weights(p, tmp_path / "m", ImportConfig(model="tv:mnasnet0_5", preset="imagenet", input_size=(32,),
                                                         num_classes=10))
    model, _ = load_checkpoint(rep.path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), model(x))
