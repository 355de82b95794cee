"""imagefolder:PATH: folders and archives, decoding, the cache, and every bad input."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from edgeopt.data import _decode, get_dataset
from edgeopt.errors import ConfigError, DataError


def _labels_from_pixels(split, colour_of):
    """The class each image's colour belongs to (images are flat class colours)."""
    px = split.images[:, :, 0, 0].tolist()
    table = {colour_of(c): c for c in range(3)}
    return [table[tuple(p)] for p in px]


def test_folder_counts_classes_and_pixels(image_tree, colour_of):
    dm = get_dataset(f"imagefolder:{image_tree}", val_fraction=0.25)
    assert dm.spec.class_names == ("cat", "dog", "emu")  # sorted folder names
    assert dm.spec.input_shape == (3, 10, 12) and dm.spec.num_classes == 3
    assert (len(dm.train), len(dm.val), len(dm.test)) == (9, 3, 6)  # 12 train, 1 per class val
    for split in (dm.train, dm.val, dm.test):
        # PNG is lossless: each pixel is its class colour, and the label matches it.
        assert _labels_from_pixels(split, colour_of) == split.labels.tolist()
    assert dm.augment.flip and dm.augment.pad == 1  # 10 // 8
    # root= is the same as imagefolder:PATH.
    same = get_dataset("imagefolder", root=image_tree, val_fraction=0.25)
    assert torch.equal(same.train.images, dm.train.images)


def test_second_load_reads_the_cache_without_decoding(image_tree, monkeypatch, isolated_cache):
    calls = []
    real = _decode.decode_images
    monkeypatch.setattr(
        _decode,
        "decode_images",
        lambda items, *a, **k: calls.append(len(items)) or real(items, *a, **k),
    )
    first = get_dataset(f"imagefolder:{image_tree}")
    assert calls == [12, 6]  # train, test
    files = list((isolated_cache / "imagefolder").glob("tree-*.safetensors"))
    assert len(files) == 1
    second = get_dataset(f"imagefolder:{image_tree}")
    assert calls == [12, 6]  # nothing decoded
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    # Changing a file (new size and mtime) invalidates the key: decoded again.
    Image.new("RGB", (12, 10), (1, 2, 3)).save(image_tree / "test" / "dog" / "00.png")
    os.utime(image_tree / "test" / "dog" / "00.png", ns=(1, 1))
    third = get_dataset(f"imagefolder:{image_tree}")
    assert calls == [12, 6, 12, 6]
    assert third.test.images[2, :, 0, 0].tolist() == [1, 2, 3]


def test_corrupt_cache_is_rebuilt(image_tree, isolated_cache):
    get_dataset(f"imagefolder:{image_tree}")
    (f,) = (isolated_cache / "imagefolder").glob("tree-*.safetensors")
    f.write_bytes(b"not a safetensors file")
    dm = get_dataset(f"imagefolder:{image_tree}")
    assert len(dm.test) == 6


def test_resize_to_first_image_and_grey(tmp_path, make_tree):
    root = make_tree(tmp_path / "t", {"train": 2, "test": 1}, size=(8, 8))
    Image.new("RGB", (20, 12), (255, 255, 255)).save(
        root / "train" / "dog" / "99.png"
    )  # other size
    dm = get_dataset(f"imagefolder:{root}", val_fraction=0)
    assert dm.spec.input_shape == (3, 8, 8)  # the first train image's size (cat/00.png)
    assert int(dm.train.images[dm.train.labels == 1].max()) == 255  # resized, not dropped
    grey = make_tree(tmp_path / "g", {"train": 2, "val": 1}, mode="L")
    dmg = get_dataset(f"imagefolder:{grey}")
    assert dmg.spec.input_shape == (1, 10, 12) and len(dmg.spec.mean) == 1


def test_one_grey_image_sorted_first_does_not_turn_a_colour_folder_grey(tmp_path, make_tree, colour_of):
    from edgeopt.errors import EdgeoptWarning

    root = make_tree(tmp_path / "t", {"train": 2, "test": 1})  # 9 RGB images
    Image.new("RGB", (12, 10), colour_of(0)).convert("L").save(root / "train" / "cat" / "000.png")
    with pytest.warns(EdgeoptWarning, match=r"^1 of 10 images of .* are grey and were converted to RGB"):
        dm = get_dataset(f"imagefolder:{root}", val_fraction=0)
    assert dm.spec.input_shape == (3, 10, 12)  # the majority's mode, not the first image's
    px = [tuple(p) for p in dm.train.images[:, :, 0, 0].tolist()]
    grey_value = Image.new("RGB", (1, 1), colour_of(0)).convert("L").getpixel((0, 0))
    assert px.count((grey_value,) * 3) == 1  # cat/000.png: its grey replicated to 3 channels
    assert px.count(colour_of(0)) == 2 and px.count(colour_of(1)) == 2  # colours kept exactly
    with pytest.warns(EdgeoptWarning, match="1 of 10"):  # said again when read from the cache
        get_dataset(f"imagefolder:{root}", val_fraction=0)
    # the reverse: mostly grey, one colour image -> grey, with the count
    grey = make_tree(tmp_path / "g", {"train": 2, "test": 1}, mode="L")
    Image.new("RGB", (12, 10), (200, 10, 10)).save(grey / "test" / "dog" / "99.png")
    with pytest.warns(EdgeoptWarning, match=r"^1 of 10 images .* are colour and were converted to grey"):
        dmg = get_dataset(f"imagefolder:{grey}", val_fraction=0)
    assert dmg.spec.input_shape == (1, 10, 12)


def test_val_only_is_the_test_split_and_val_plus_test_are_kept(tmp_path, make_tree):
    only_val = make_tree(tmp_path / "a", {"train": 4, "val": 2})
    dm = get_dataset(f"imagefolder:{only_val}", val_fraction=0.25)
    assert (len(dm.train), len(dm.val), len(dm.test)) == (9, 3, 6)
    both = make_tree(tmp_path / "b", {"train": 4, "val": 1, "test": 2})
    dm = get_dataset(f"imagefolder:{both}", val_fraction=0.25)
    assert (len(dm.train), len(dm.val), len(dm.test)) == (12, 3, 6)  # val from val/, not carved


def _tar(path, root, arc_prefix=""):
    with tarfile.open(path, "w:gz") as t:
        t.add(root, arcname=arc_prefix or ".")
    return path


def test_tar_gz_of_a_tree_and_per_split_archives(tmp_path, image_tree, monkeypatch):
    whole = _tar(tmp_path / "mine.tar.gz", image_tree, "mine")  # wrapped in one folder
    dm = get_dataset(f"imagefolder:{whole}")
    assert (len(dm.train) + len(dm.val), len(dm.test)) == (12, 6)
    assert dm.spec.class_names == ("cat", "dog", "emu")
    split_dir = tmp_path / "bysplit"
    split_dir.mkdir()
    _tar(split_dir / "train.tar.gz", image_tree / "train", "train")  # train/<class>/...
    _tar(split_dir / "test.tar.gz", image_tree / "test")  # <class>/... directly
    dm2 = get_dataset(f"imagefolder:{split_dir}")
    assert torch.equal(dm2.test.images, dm.test.images)
    assert torch.equal(dm2.train.images, dm.train.images)
    # A cache hit does not even open the archives.
    monkeypatch.setattr("edgeopt.data.imagefolder.read_archive", lambda *a: pytest.fail("read"))
    assert len(get_dataset(f"imagefolder:{split_dir}").test) == 6


def _png_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind, words",
    [
        ("dotdot", "unsafe path '../evil.png'"),
        ("absolute", "unsafe path '/tmp/evil.png'"),
        ("symlink", "holds a link"),
        ("device", "special file"),
    ],
)
def test_malicious_archive_member_is_refused(tmp_path, kind, words):
    data = _png_bytes()
    arch = tmp_path / "bad.tar.gz"
    with tarfile.open(arch, "w:gz") as t:
        for name in ("train/a/0.png", "test/a/0.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(
            {"dotdot": "../evil.png", "absolute": "/tmp/evil.png"}.get(kind, "train/a/x.png")
        )
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            info.type = tarfile.CHRTYPE
        else:
            info.size = len(data)
        t.addfile(info, io.BytesIO(data) if info.isfile() else None)
    with pytest.raises(DataError, match=words) as exc:
        get_dataset(f"imagefolder:{arch}")
    assert "\n" not in str(exc.value)
    assert not (tmp_path.parent / "evil.png").exists()


def test_bad_inputs_are_one_line_data_errors(tmp_path, make_tree):
    cases = []
    cases.append((tmp_path / "missing", "does not exist"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "no train/ folder"))
    only_train = make_tree(tmp_path / "ot", {"train": 1})
    cases.append((only_train, "no test/ or val/ folder"))
    mism = make_tree(tmp_path / "mm", {"train": 1})
    make_tree(mism, {"test": 1}, classes=("cat", "dog", "fox"))
    cases.append(
        (mism, r"classes of test/ .* \(cat, dog, fox\) differ from train's \(cat, dog, emu\)")
    )
    noimg = tmp_path / "noimg"
    for split in ("train", "test"):
        (noimg / split / "a").mkdir(parents=True)
        (noimg / split / "a" / "readme.txt").write_text("no images here")
    cases.append((noimg, "no images"))
    noclass = tmp_path / "noclass"
    (noclass / "train").mkdir(parents=True)
    (noclass / "test").mkdir()
    cases.append((noclass, "no class folders"))
    emptyclass = make_tree(tmp_path / "ec", {"train": 1, "test": 1})
    (emptyclass / "train" / "zzz").mkdir()
    (emptyclass / "test" / "zzz").mkdir()
    cases.append((emptyclass, "without images .*zzz"))
    corrupt = make_tree(tmp_path / "cc", {"train": 1, "test": 1})
    (corrupt / "train" / "dog" / "00.png").write_bytes(b"\x89PNG garbage")
    cases.append((corrupt, "cannot (read|decode) image"))
    plain_file = tmp_path / "file.txt"
    plain_file.write_text("x")
    cases.append((plain_file, "neither a folder nor a .tar.gz"))
    for path, words in cases:
        with pytest.raises(DataError, match=words) as exc:
            get_dataset(f"imagefolder:{path}")
        assert "\n" not in str(exc.value), path


def test_decode_images_paths_and_bytes_agree(image_tree):
    paths = sorted(str(p) for p in (image_tree / "train").rglob("*.png"))
    a = _decode.decode_images(paths, (10, 12), "RGB")
    b = _decode.decode_images([Path(p).read_bytes() for p in paths], (10, 12), "RGB")
    assert a.shape == (12, 3, 10, 12) and (a == b).all()


def test_jpeg_fast_path_matches_pil(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    blobs = []
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=80
        )
        blobs.append(buf.getvalue())
    fast = _decode.decode_chunk(blobs, [str(i) for i in range(6)], (9, 7), "RGB")
    pil = np.stack(
        [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).transpose(2, 0, 1) for b in blobs]
    )
    assert (fast == pil).all()  # the same libjpeg-turbo decoder: bit-identical
    grey = _decode.decode_chunk(blobs[:2], ["a", "b"], (9, 7), "L")
    assert grey.shape == (2, 1, 9, 7)
    resized = _decode.decode_chunk(blobs[:2], ["a", "b"], (4, 5), "RGB")  # PIL resize path
    assert resized.shape == (2, 3, 4, 5)


def test_imagefolder_needs_a_path():
    with pytest.raises(ConfigError, match="needs a path"):
        get_dataset("imagefolder")
