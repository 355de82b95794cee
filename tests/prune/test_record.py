"""The structure record: pruned shapes saved as JSON, rebuilt on the base architecture."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from edgeopt.errors import ModelLoadError, UnsupportedModelError
from edgeopt.models import create_model, load_checkpoint, read_sidecar, save_checkpoint
from edgeopt.models.checkpoint import FORMAT_VERSION
from edgeopt.prune import PruneConfig, prune
from edgeopt.prune.record import apply_record_, make_record
from edgeopt.spec import ModelSpec, attach_spec

SPEC = ModelSpec((3, 8, 8), 10, (0.5,) * 3, (0.25,) * 3)


class _Net(nn.Module):
    def __init__(self, c: int = 16, h: int = 12):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.gn = nn.GroupNorm(4, c)
        self.fc1 = nn.Linear(c, h)
        self.ln = nn.LayerNorm(h)
        self.fc2 = nn.Linear(h, 10)

    def forward(self, x):
        x = self.gn(self.dw(torch.relu(self.bn(self.conv(x)))))
        return self.fc2(self.ln(self.fc1(x.mean((2, 3)))))


def _pair():
    torch.manual_seed(0)
    base = attach_spec(_Net().eval(), SPEC)
    pruned = attach_spec(_Net(8, 4).eval(), SPEC)
    with torch.no_grad():
        for p in pruned.parameters():
            p.uniform_(-1, 1)
        pruned.bn.running_mean.uniform_(-0.1, 0.1)
    return base, pruned


def test_make_record_lists_changed_shapes_only():
    base, pruned = _pair()
    r = make_record(base, pruned)
    assert json.loads(json.dumps(r)) == r
    assert sorted(r["modules"]) == ["bn", "conv", "dw", "fc1", "fc2", "gn", "ln"]
    assert r["modules"]["conv"] == {"type": "Conv2d", "attrs": {"in_channels": 3, "out_channels": 8, "groups": 1},
                                    "params": {"weight": [8, 3, 3, 3], "bias": None}, "buffers": {}}
    assert r["modules"]["dw"]["attrs"] == {"in_channels": 8, "out_channels": 8, "groups": 8}
    assert r["modules"]["bn"]["buffers"] == {"running_mean": [8], "running_var": [8], "num_batches_tracked": []}
    assert r["modules"]["gn"]["attrs"] == {"num_channels": 8, "num_groups": 4}
    assert r["modules"]["ln"]["attrs"] == {"normalized_shape": [4]}
    assert r["modules"]["fc2"]["attrs"] == {"in_features": 4, "out_features": 10}
    assert r["channels"] == {"conv": [16, 8], "dw": [16, 8], "fc1": [12, 4], "fc2": [10, 10]}
    assert "" not in r["modules"] and make_record(base, copy.deepcopy(base))["modules"] == {}


def test_apply_record_rebuilds_shapes_and_the_weights_load():
    base, pruned = _pair()
    rebuilt = apply_record_(attach_spec(_Net().eval(), SPEC), make_record(base, pruned))
    assert rebuilt.ln.normalized_shape == (4,) and rebuilt.gn.num_channels == 8
    assert rebuilt.conv.bias is None and rebuilt.dw.weight.shape == (8, 1, 3, 3)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in pruned.parameters())
    rebuilt.load_state_dict(pruned.state_dict())
    x = SPEC.example_input(3)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))


@pytest.mark.parametrize("edit, msg", [
    (lambda r: r["modules"].__setitem__("nope", {"type": "Conv2d"}),
     "resizes Conv2d 'nope' but the model has nothing there"),
    (lambda r: r["modules"]["bn"].__setitem__("type", "LayerNorm"),
     "resizes LayerNorm 'bn' but the model has BatchNorm2d there"),
    (lambda r: r["modules"]["conv"]["attrs"].__setitem__("out_channels", "x"), "the pruning record is malformed"),
    (lambda r: r.__setitem__("version", 99), "version 99"),
    (lambda r: r.__setitem__("format", "other"), "is not an edgeopt_prune_record"),
    (lambda r: r["modules"]["fc2"]["params"].__setitem__("weight", [10, 5]), "does not fit this model"),
])
def test_bad_records_are_one_line_load_errors(edit, msg):
    base, pruned = _pair()
    record = make_record(base, pruned)
    edit(record)
    with pytest.raises(ModelLoadError, match=msg) as err:
        apply_record_(attach_spec(_Net().eval(), SPEC), record)
    assert "\n" not in str(err.value)


def test_replaced_modules_cannot_be_recorded():
    base, pruned = _pair()
    pruned.ln = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="pruning replaced module 'ln' \\(Identity\\)"):
        make_record(base, pruned)


def test_checkpoint_carries_the_record_and_old_checkpoints_still_load(tmp_path):
    spec = ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    model = create_model("resnet20", spec).eval()
    r = prune(model, PruneConfig(method="structured", ratio=0.5, round_to=8))
    path = save_checkpoint(tmp_path / "pruned", r.model)
    side = read_sidecar(path)
    assert side["format_version"] == FORMAT_VERSION == 1
    assert side["pruning"]["channels"]["layer1.0.conv1"] == [16, 8]
    loaded, _ = load_checkpoint(path)
    assert loaded.edgeopt_prune_record == side["pruning"]
    assert sum(p.numel() for p in loaded.parameters()) == r.params_after == 73802
    x = spec.example_input(2)
    with torch.no_grad():
        assert torch.allclose(loaded(x), r.model(x), atol=1e-6)
    # an unpruned checkpoint has no "pruning" key and loads as before
    plain = save_checkpoint(tmp_path / "plain", model)
    assert "pruning" not in read_sidecar(plain)
    loaded2, _ = load_checkpoint(plain)
    assert not hasattr(loaded2, "edgeopt_prune_record")
    assert sum(p.numel() for p in loaded2.parameters()) == r.params_before == 272474


def test_a_record_may_set_only_shape_attributes_and_existing_tensors():
    """A sidecar is data: a hand-edited record that sets another attribute or adds a tensor is
    refused in one line, before anything is changed."""
    import pytest as _pytest
    from torch import nn as _nn

    from edgeopt.errors import ModelLoadError
    from edgeopt.prune.record import RECORD_FORMAT, RECORD_VERSION, apply_record_

    for entry in ({"type": "Conv2d", "attrs": {"forward": 3}},
                  {"type": "Conv2d", "params": {"extra_weight": [2, 2]}}):
        rec = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "modules": {"0": entry}}
        with _pytest.raises(ModelLoadError) as e:
            apply_record_(_nn.Sequential(_nn.Conv2d(3, 4, 3)), rec, verify=False)
        assert "damaged" in str(e.value) and "\n" not in str(e.value)
