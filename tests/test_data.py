"""Data specs on real CIFAR-10 images: image folders, CIFAR python batches, the uint8 cache and batch augmentation."""

from __future__ import annotations

import pickle

import pytest
import torch

from edgecnn.core.errors import UserError
from edgecnn.data.datasets import SPLIT_SEED, augment_batch, load_data


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECNN_CACHE", str(tmp_path / "cache"))


def test_imagefolder_decodes_once_into_uint8(tmp_path, cifar_small):
    data = load_data(f"imagefolder:{cifar_small}", 0.1, [0.5] * 3, [0.25] * 3)
    assert data.classes[:3] == ["airplane", "automobile", "bird"] and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (360, 40, 300)
    assert data.train.x.dtype == torch.uint8 and data.input_shape == (3, 32, 32)
    assert torch.bincount(data.test.y).tolist() == [30] * 10
    caches = sorted((tmp_path / "cache").glob("imagefolder-*.npz"))
    assert len(caches) == 2  # train and test folders, decoded once
    again = load_data(f"imagefolder:{cifar_small}", 0.1, [0.5] * 3, [0.25] * 3)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)
    x = data.normalize(data.test.x[:4])
    assert x.dtype == torch.float32 and torch.allclose(x, (data.test.x[:4].float() / 255 - 0.5) / 0.25)


def _write_batch(path, x: torch.Tensor, y: torch.Tensor) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"data": x.reshape(len(x), -1).numpy(), b"labels": y.tolist()}, f)


def test_cifar10_python_batches_match_the_image_folder(tmp_path, cifar_small):
    ref = load_data(f"imagefolder:{cifar_small}", 0.0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, idx in enumerate(torch.arange(len(ref.train)).chunk(5), start=1):
        _write_batch(folder / f"data_batch_{i}", ref.train.x[idx], ref.train.y[idx])
    _write_batch(folder / "test_batch", ref.test.x, ref.test.y)
    data = load_data(f"cifar10:{folder}", 0.0)
    order = torch.randperm(len(ref.train), generator=torch.Generator().manual_seed(SPLIT_SEED))  # the fixed split
    assert torch.equal(data.train.x, ref.train.x[order]) and torch.equal(data.train.y, ref.train.y[order])
    assert torch.equal(data.test.x, ref.test.x)
    assert torch.equal(data.test.y, ref.test.y) and data.classes == ref.classes


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/edgecnn-should-not-exist", "w"))


def test_cifar10_batches_never_run_code(tmp_path):
    folder = tmp_path / "batches"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}))
    with pytest.raises(UserError, match="data_batch_1: not a CIFAR-10 python batch"):
        load_data(f"cifar10:{folder}")
    with pytest.raises(UserError, match="missing CIFAR-10 batch"):
        load_data(f"cifar10:{tmp_path}")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="missing train/ folder"):
        load_data(f"imagefolder:{tmp_path}")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "1.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "test" / "cat" / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="1.jpg: not a readable image"):
        load_data(f"imagefolder:{tmp_path}")


def test_augment_batch_is_a_padded_crop_and_flip(cifar_small):
    data = load_data(f"imagefolder:{cifar_small}")
    x = data.train.x[:16]
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        crops = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(out[i], c) for c in crops)
        flipped = any(torch.equal(out[i], c.flip(2)) for c in crops)
        assert plain or flipped
        flips += flipped and not plain
    assert 0 < flips < len(x)  # some flipped, some not


def test_stratified_sample_is_balanced_seeded_and_interleaved():
    """Folder order (one class after another) is what calibration used to take the first images of."""
    from edgecnn.data.datasets import Split

    y = torch.cat([torch.full((n,), c) for c, n in enumerate([300, 120, 50, 30])])  # sorted by class
    split = Split(torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2), y)
    s = split.stratified(100, seed=3)
    assert torch.bincount(s.y, minlength=4).tolist() == [25, 25, 25, 25]
    assert sorted(torch.bincount(s.y[:8], minlength=4).tolist()) == [2, 2, 2, 2]  # every prefix is balanced
    assert torch.equal(s.y, split.stratified(100, seed=3).y) and not torch.equal(s.y, split.stratified(100, 4).y)
    big = split.stratified(300, seed=3)  # class 3 runs out at 30: the others fill in evenly
    assert torch.bincount(big.y, minlength=4).tolist() == [110, 110, 50, 30]
    assert len(split.stratified(10_000)) == len(split)


def _png(path, size, value, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_calibration_images_cover_every_class_of_a_folder_with_val(tmp_path):
    for split, n in (("train", 40), ("val", 5), ("test", 5)):
        for c, name in enumerate(["a_first", "b", "c", "d"]):
            for i in range(n):
                _png(tmp_path / split / name / f"{i}.png", (8, 8), (10 * c, i, 0))
    data = load_data(f"imagefolder:{tmp_path}")
    assert data.train.y[:40].unique().tolist() == [0]  # the folder's order: the first 40 are one class
    calib = data.calibration(64, seed=0)
    assert torch.bincount(calib.y).tolist() == [16] * 4


def test_mixed_image_sizes_are_an_error_or_resized_with_image_size(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            for i in range(3):
                _png(tmp_path / split / c / f"{i}.png", (32, 32), (200, 10, 10))
    odd = tmp_path / "test" / "dog" / "9.png"
    _png(odd, (40, 64), (10, 200, 10))
    from PIL import Image

    with Image.open(odd) as im:  # its top 16 rows blue
        im = im.copy()
    im.paste((0, 0, 250), (0, 0, 40, 16))
    im.save(odd)
    with pytest.raises(UserError) as e:
        load_data(f"imagefolder:{tmp_path}")
    msg = str(e.value)
    assert msg.startswith(f"{odd}: 40x64 pixels") and "32x32" in msg and "data.image_size" in msg
    assert "\n" not in msg
    data = load_data(f"imagefolder:{tmp_path}", image_size=32)
    assert data.input_shape == (3, 32, 32) and len(data.test) == 7
    fitted = data.test.x[data.test.y == 1][-1]  # 40x64 scaled to 32x51 (blue rows 0-12), then rows 9-41 kept
    assert fitted[2, 0, 16] > 200 and fitted[1, 0, 16] < 50  # the crop starts inside the blue band ...
    assert fitted[:, 8, 16].tolist() == [10, 200, 10]  # ... which a plain resize to 32x32 would show until row 8
    wide = load_data(f"imagefolder:{tmp_path}", image_size=[16, 24])
    assert wide.input_shape == (3, 16, 24)
    with pytest.raises(UserError, match="data.image_size: mnist5k images are 28x28"):
        load_data("mnist5k", image_size=32)
