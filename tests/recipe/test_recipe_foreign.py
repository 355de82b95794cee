"""A recipe on a model trained elsewhere: a torchvision network trained by plain PyTorch code
with ImageNet statistics, saved as a DataParallel state_dict, brought in with `edgeopt import`,
then quantized, pruned and exported by a recipe whose every number uses the model's own
preprocessing (not the image folder's statistics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgeopt.models.importing import ImportConfig, import_weights
from edgeopt.recipe import load_recipe, run_recipe

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLASSES = ("blue", "green", "red")  # sorted, as the image folder names them


def _image(cls: int, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 colour image whose dominant channel is the class, with a bright square."""
    img = rng.integers(0, 90, (32, 32, 3))
    img[..., 2 - cls] += 110  # blue=0 -> channel 2, green -> 1, red -> 0
    y, x = rng.integers(0, 24, 2)
    img[y:y + 8, x:x + 8] = 230
    return img.clip(0, 255).astype(np.uint8)


def _folder(root, per_class: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(c, rng)).save(d / f"{i}.png")


def _tensors(root, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split as the other code base feeds it: ImageNet mean/std, labels by sorted folder."""
    xs, ys = [], []
    for c, name in enumerate(CLASSES):
        for f in sorted((root / split / name).glob("*.png")):
            xs.append(torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255)
            ys.append(c)
    x = torch.stack(xs)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    return (x - mean) / std, torch.tensor(ys)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A torchvision ResNet-18 trained elsewhere (plain PyTorch, ImageNet normalisation)."""
    import torchvision

    tmp = tmp_path_factory.mktemp("foreign")
    _folder(tmp / "images", {"train": 40, "test": 20})
    x, y = _tensors(tmp / "images", "train")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    net.train()
    for _ in range(4):
        for i in torch.randperm(len(x)).split(20):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    net.eval()
    pth = tmp / "resnet18_colours.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 4}, pth)
    xt, yt = _tensors(tmp / "images", "test")
    with torch.no_grad():
        own_top1 = float((net(xt).argmax(1) == yt).float().mean())
    data = f"imagefolder:{tmp / 'images'}"
    rep = import_weights(pth, tmp / "imported", ImportConfig(model="tv:resnet18", preset="imagenet",
                                                             input_size=(32,), data=data))
    return tmp, data, rep.path, own_top1


def test_a_recipe_on_an_imported_torchvision_model_uses_its_own_preprocessing(foreign):
    tmp, data, ckpt, own_top1 = foreign
    assert own_top1 > 0.8  # it learned the colours
    recipe = tmp / "r.yaml"
    recipe.write_text(f"""
name: foreign
out_dir: {tmp / 'out'}
data: {{name: "{data}"}}
baseline: {{checkpoint: "{ckpt}"}}
target: {{formats: [onnx], latency_runs: 3, warmup: 1, throughput_batch: 0, memory: false}}
constraints: {{max_drop: 10.0}}
variants:
  int8:
    - quantize: {{backend: onnxruntime, calibration_samples: 60}}
  pruned 30:
    - prune: {{method: structured, ratio: 0.3}}
    - finetune: {{epochs: 1, lr: 0.005, batch_size: 20, progress: false}}
    - export: {{formats: [onnx]}}
""")
    r = load_recipe(recipe)
    res = run_recipe(r, progress=False)
    by = {v["name"]: v for v in res["variants"]}
    # what every step and row was fed: the test images normalised as the other code base did
    # (ImageNet statistics), not with the folder's own (about 0.355 / 0.262 per channel)
    from edgeopt.recipe.runner import _Run

    dm = _Run(r, tmp / "out", False).load_data()
    assert dm.spec.mean == IMAGENET[0] and dm.spec.std == IMAGENET[1]
    fed, _ = dm.samples(60, split="test")
    xt, _ = _tensors(tmp / "images", "test")
    assert torch.allclose(fed.mean((0, 2, 3)), xt.mean((0, 2, 3)), atol=1e-5)
    assert list(by) == ["baseline torch", "baseline onnx", "int8", "pruned 30"]
    # the recipe's baseline row is the other code base's own accuracy: fed with ImageNet
    # statistics, not the folder's (60 test images: one image is 1.67 points)
    assert by["baseline torch"]["accuracy"]["top1"] == pytest.approx(own_top1, abs=1e-6)
    assert by["baseline torch"]["accuracy"]["n"] == 60
    assert by["baseline onnx"]["accuracy"]["top1"] == pytest.approx(own_top1, abs=1e-6)
    assert by["baseline onnx"]["parity"]["passed"]
    assert by["int8"]["precision"] == "int8"
    assert by["int8"]["quantization"]["agreement"]["top1_agreement"] >= 0.9
    assert by["pruned 30"]["pruning"]["params_after"] < 0.75 * by["pruned 30"]["pruning"]["params_before"]
    assert [s["step"] for s in by["pruned 30"]["lineage"]][:1] == ["import"]
    assert res["choice"]["chosen"] in by


def test_a_recipe_whose_data_has_other_classes_than_the_checkpoint_is_one_line(foreign, tmp_path):
    from edgeopt.errors import DataError

    _, _, ckpt, _ = foreign
    other = tmp_path / "other"
    for split in ("train", "test"):
        for name in ("cat", "dog", "fox"):
            d = other / split / name
            d.mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(d / "0.png")
            Image.fromarray(np.full((32, 32, 3), 150, np.uint8)).save(d / "1.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: wrong-data
out_dir: {tmp_path / 'out'}
data: {{name: "imagefolder:{other}"}}
baseline: {{checkpoint: "{ckpt}"}}
variants:
  int8: [quantize: {{backend: onnxruntime}}]
""")
    with pytest.raises(DataError, match="class"):
        run_recipe(load_recipe(recipe), progress=False)
