"""Detection data on real MNIST digits: mnist-detect, COCO and YOLO folders written as PNG/JPEG, letterbox,
augmentation that moves boxes with pixels, and one-line errors for malformed annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from edgecnn.core.errors import UserError
from edgecnn.data.datasets import _mnist_arrays, load_mnist5k
from edgecnn.tasks.detection.data import (
    INK,
    augment_detection,
    digit_pools,
    letterbox,
    letterbox_geometry,
    load_detection_data,
    mnist_detect,
    targets_of,
)

SIZE = 48  # letterbox size of the folder tests


@pytest.fixture(scope="module")
def scenes():
    """Real-digit scenes of varied sizes (a 64x64 mnist-detect canvas inside a larger black image)."""
    canvases = mnist_detect(64, {"train": 10, "val": 4, "test": 4})
    out = {}
    for split, s in canvases.items():
        items = []
        for i, ((boxes, classes), x) in enumerate(zip(targets_of(s.y), s.x, strict=True)):
            ox, oy = 3 * (i % 4), 5 * (i % 2)
            w, h = 64 + ox + 16 * (i % 3), 64 + oy + 10 * (i % 2)
            img = np.zeros((h, w), np.uint8)
            img[oy : oy + 64, ox : ox + 64] = x[0].numpy()
            items.append((img, boxes + [ox, oy, ox, oy], classes))
        out[split] = items
    return out


def _write_images(folder, items, ext):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (img, _, _) in enumerate(items):
        name = f"im{i:03d}{ext}"
        (Image.fromarray(img).convert("RGB") if ext == ".jpg" else Image.fromarray(img)).save(folder / name)
        names.append(name)
    return names


def write_coco(root, scenes, splits=("train", "val", "test"), ext=".png", image_dir="{split}"):
    for split in splits:
        items = scenes[split]
        names = _write_images(root / image_dir.format(split=split), items, ext)
        anns = []
        for i, (_, boxes, classes) in enumerate(items):
            for b, c in zip(boxes, classes, strict=True):
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 2 * int(c) + 1, "iscrowd": 0,
                             "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h})
        doc = {
            "images": [{"id": i + 1, "file_name": n, "width": it[0].shape[1], "height": it[0].shape[0]}
                       for i, (n, it) in enumerate(zip(names, items, strict=True))],
            "annotations": anns,
            "categories": [{"id": 2 * d + 1, "name": f"digit-{d}"} for d in range(10)],
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def write_yolo(root, scenes, splits=("train", "val", "test"), ext=".png", names_as_dict=False, roboflow=False):
    names = [f"digit-{d}" for d in range(10)]
    cfg = {"names": dict(enumerate(names)) if names_as_dict else names, "nc": 10}
    for split in splits:
        sub = {"val": "valid"}.get(split, split) if roboflow else split
        img_dir = root / sub / "images" if roboflow else root / "images" / split
        lab_dir = root / sub / "labels" if roboflow else root / "labels" / split
        files = _write_images(img_dir, scenes[split], ext)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for f, (img, boxes, classes) in zip(files, scenes[split], strict=True):
            h, w = img.shape
            cxcywh = [((b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h, (b[2] - b[0]) / w, (b[3] - b[1]) / h)
                      for b in boxes]
            lines = [f"{c} " + " ".join(f"{v:.6f}" for v in row) for row, c in zip(cxcywh, classes, strict=True)]
            (lab_dir / f.replace(ext, ".txt")).write_text("\n".join(lines) + "\n")
        if roboflow:
            cfg[split] = f"../{sub}/images"
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _expected(items, size):
    """Each scene's boxes moved by the letterbox, computed from the geometry alone."""
    out = []
    for img, boxes, classes in items:
        h, w = img.shape
        new_w, new_h, left, top = letterbox_geometry(w, h, size)
        sx, sy = new_w / w, new_h / h
        out.append((boxes * [sx, sy, sx, sy] + [left, top, left, top], classes))
    return out


# ---- mnist-detect --------------------------------------------------------------------------------------


def test_mnist_detect_is_deterministic_with_exact_tight_boxes():
    a = mnist_detect(64, {"train": 40, "val": 5, "test": 5})
    b = mnist_detect(64, {"train": 40, "val": 5, "test": 5})
    assert torch.equal(a["train"].x, b["train"].x) and torch.equal(a["train"].y, b["train"].y)
    x, per_image = a["train"].x[:, 0].numpy(), targets_of(a["train"].y)
    counts = [len(c) for _, c in per_image]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    sides = np.concatenate([np.maximum(bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]) for bx, _ in per_image])
    assert sides.min() < 12 and sides.max() > 20  # several scales
    for img, (boxes, _) in zip(x, per_image, strict=True):
        for x1, y1, x2, y2 in boxes.astype(int):  # ink touches all four sides of every box
            region = img[y1:y2, x1:x2] >= INK
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
        if len(boxes) == 1:  # alone on its canvas: the box is exactly the ink's bounding box
            rows, cols = np.nonzero(img >= INK)
            assert boxes[0].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_mnist_detect_digit_pools_are_disjoint_and_test_uses_mnist5ks_test_digits():
    pools = digit_pools()
    assert [len(pools[s]) for s in ("train", "val", "test")] == [3600, 400, 1000]
    assert len(np.unique(np.concatenate(list(pools.values())))) == 5000
    _, _, test, _ = load_mnist5k(0.1)
    digits, _ = _mnist_arrays()
    assert np.array_equal(digits[pools["test"]], test.x.numpy())


def test_mnist_detect_spec_loads_with_normalisation():
    data = load_detection_data("mnist-detect", 64, mnist_counts={"train": 30, "val": 6, "test": 8})
    assert (len(data.train), len(data.val), len(data.test)) == (30, 6, 8)
    assert data.input_shape == (1, 64, 64) and data.classes == [str(d) for d in range(10)]
    assert data.pad_value == 0 and data.describe()["task"] == "detection"
    assert 0 < data.mean[0] < 0.3


# ---- letterbox and augmentation ------------------------------------------------------------------------


def test_letterbox_moves_boxes_exactly_with_the_pixels():
    img = np.zeros((60, 100), np.uint8)
    img[10:30, 20:70] = 255  # a white box, x 20..70, y 10..30
    out, boxes = letterbox(Image.fromarray(img), np.array([[20, 10, 70, 30]], np.float32), 50, pad_value=114)
    assert out.shape == (50, 50)
    assert (out[:10] == 114).all() and (out[40:] == 114).all()  # 100x60 -> 50x30, 10 rows of padding each side
    np.testing.assert_allclose(boxes, [[10, 15, 35, 25]])
    rows, cols = np.nonzero(out >= 128)  # the resized edges are blended; half-way is where the box edge lies
    assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == [10, 15, 35, 25]


def _rect_batch(n=16, size=64):
    rng = np.random.default_rng(0)
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    y = torch.full((n, 1, 5), -1.0)
    for i in range(n):
        w, h = rng.integers(8, 24, 2)
        x1, y1 = rng.integers(4, size - 28, 2)
        x[i, 0, y1 : y1 + h, x1 : x1 + w] = 255
        y[i, 0] = torch.tensor([i % 10, x1, y1, x1 + w, y1 + h], dtype=torch.float32)
    return x, y


def test_augmentation_flip_alone_is_exact():
    x, y = _rect_batch()
    out, boxes = augment_detection(x, y, torch.Generator().manual_seed(1), scale=0, translate=0, pad_value=0)
    flipped = [i for i in range(len(x)) if not torch.equal(out[i], x[i])]
    assert 0 < len(flipped) < len(x)
    for i in range(len(x)):
        expect = x[i].flip(-1) if i in flipped else x[i]
        assert torch.equal(out[i], expect)
        b = y[i, 0].clone()
        if i in flipped:
            b[1], b[3] = 64 - y[i, 0, 3], 64 - y[i, 0, 1]
        assert torch.allclose(boxes[i, 0], b)


def test_augmentation_jitter_keeps_boxes_on_the_moved_pixels():
    x, y = _rect_batch(32)
    out, boxes = augment_detection(x, y, torch.Generator().manual_seed(2), scale=0.3, translate=0.2, pad_value=0)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    kept = 0
    for i in range(len(x)):
        c, *box = boxes[i, 0].tolist()
        if c < 0:
            continue
        kept += 1
        assert c == y[i, 0, 0]
        rows, cols = np.nonzero(out[i, 0].numpy() >= 128)
        ink = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        np.testing.assert_allclose(ink, box, atol=1.0)
    assert kept >= 24


# ---- coco:PATH and yolo:PATH ---------------------------------------------------------------------------


def test_coco_folder_decodes_with_exact_letterboxed_boxes(tmp_path, scenes):
    root = write_coco(tmp_path / "coco", scenes)
    data = load_detection_data(f"coco:{root}", SIZE)
    assert data.classes == [f"digit-{d}" for d in range(10)]  # category ids 1, 3, ..., 19 map to 0..9
    assert (len(data.train), len(data.val), len(data.test)) == (10, 4, 4)
    assert data.input_shape == (1, SIZE, SIZE)  # every image is grayscale
    for got, (boxes, classes) in zip(targets_of(data.test.y), _expected(scenes["test"], SIZE), strict=True):
        np.testing.assert_allclose(got[0], boxes, atol=1e-4)
        assert got[1].tolist() == classes.tolist()


def test_yolo_folder_decodes_like_the_same_coco_folder(tmp_path, scenes):
    coco = load_detection_data(f"coco:{write_coco(tmp_path / 'coco', scenes)}", SIZE)
    yolo = load_detection_data(f"yolo:{write_yolo(tmp_path / 'yolo', scenes, names_as_dict=True)}", SIZE)
    assert yolo.classes == coco.classes
    for a, b in ((yolo.train, coco.train), (yolo.val, coco.val), (yolo.test, coco.test)):
        assert torch.equal(a.x, b.x)
        assert torch.allclose(a.y, b.y, atol=1e-3)  # labels carry 6 decimals


def test_coco_images_layout_jpeg_and_held_out_splits(tmp_path, scenes):
    """images/<split> folders, RGB JPEGs, and train + val only: val becomes test, validation is held out."""
    root = write_coco(tmp_path / "coco", scenes, splits=("train", "val"), ext=".jpg", image_dir="images/{split}")
    data = load_detection_data(f"coco:{root}", SIZE, val_fraction=0.2)
    assert data.input_shape == (3, SIZE, SIZE)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 4)
    assert torch.equal(data.test.y, load_detection_data(f"coco:{root}", SIZE).test.y)


def test_yolo_roboflow_layout_and_polygon_lines(tmp_path, scenes):
    """train/images + valid/images named by data.yaml as ../train/images; a polygon line is read as its box."""
    plain = load_detection_data(f"yolo:{write_yolo(tmp_path / 'plain', scenes, splits=('train', 'val'))}", SIZE)
    root = write_yolo(tmp_path / "rf", scenes, splits=("train", "val"), roboflow=True)
    label = root / "train" / "labels" / "im000.txt"
    (img, boxes, classes) = scenes["train"][0]
    h, w = img.shape
    x1, y1, x2, y2 = boxes[0] / [w, h, w, h]
    poly = f"{classes[0]} {x1:.6f} {y1:.6f} {x2:.6f} {y1:.6f} {(x1 + x2) / 2:.6f} {y2:.6f}"  # a triangle in the box
    label.write_text("\n".join([poly] + label.read_text().splitlines()[1:]))
    data = load_detection_data(f"yolo:{root}", SIZE)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 1, 4)
    for a, b in ((data.train, plain.train), (data.val, plain.val), (data.test, plain.test)):
        assert torch.equal(a.x, b.x) and torch.allclose(a.y, b.y, atol=1e-3)


def test_an_empty_yolo_label_file_is_an_image_without_objects(tmp_path, scenes):
    root = write_yolo(tmp_path / "yolo", scenes)
    (root / "labels" / "test" / "im000.txt").write_text("")
    (root / "labels" / "test" / "im001.txt").unlink()  # a missing label file means the same
    data = load_detection_data(f"yolo:{root}", SIZE)
    per_image = targets_of(data.test.y)
    assert len(per_image[0][1]) == 0 and len(per_image[1][1]) == 0 and len(per_image[2][1]) > 0


def _break_coco(root, how):
    ann = root / "annotations" / "instances_train.json"
    if how == "bad json":
        ann.write_text(ann.read_text()[:-40])
        return ann.name, "bad JSON"
    doc = json.loads(ann.read_text())
    if how == "box outside":
        doc["annotations"][2]["bbox"] = [50.0, 10.0, 200.0, 20.0]
        expect = f"annotation id {doc['annotations'][2]['id']}"
    elif how == "unknown category":
        doc["annotations"][1]["category_id"] = 99
        expect = "category_id 99"
    elif how == "missing image":
        (root / "train" / doc["images"][3]["file_name"]).unlink()
        expect = doc["images"][3]["file_name"]
    elif how == "unknown image":
        doc["annotations"][0]["image_id"] = 777
        expect = "image_id 777"
    elif how == "no annotations list":
        del doc["annotations"]
        expect = "'annotations'"
    elif how == "bad bbox":
        doc["annotations"][0]["bbox"] = [1, 2, 3]
        expect = "'bbox' must be"
    ann.write_text(json.dumps(doc))
    return ann.name, expect


@pytest.mark.parametrize(
    "how", ["bad json", "box outside", "unknown category", "missing image", "unknown image", "no annotations list",
            "bad bbox"]
)
def test_malformed_coco_annotations_end_in_one_line_naming_file_and_entry(tmp_path, scenes, how):
    root = write_coco(tmp_path / "coco", scenes)
    file, expect = _break_coco(root, how)
    with pytest.raises(UserError) as e:
        load_detection_data(f"coco:{root}", SIZE)
    msg = str(e.value)
    assert "\n" not in msg and file in msg and expect in msg, msg


@pytest.mark.parametrize(
    "text, expect",
    [
        ("0 0.5 0.5 0.2 0.2\n3 1.4 0.5 0.2 0.2\n", "line 2"),  # outside 0..1
        ("12 0.5 0.5 0.2 0.2\n", "class 12"),  # unknown class
        ("0 0.5 0.5\n", "line 1"),  # too few values
        ("0 0.5 zero 0.2 0.2\n", "not numbers"),
        ("0 0.5 0.5 0.2 0.2\n\n1 0.3 0.3 0.1 0.1\n", "line 2 is empty"),
        ("0 0.5 0.5 0.0 0.2\n", "empty"),  # zero-width box
    ],
)
def test_malformed_yolo_labels_end_in_one_line_naming_file_and_line(tmp_path, scenes, text, expect):
    root = write_yolo(tmp_path / "yolo", scenes)
    (root / "labels" / "train" / "im004.txt").write_text(text)
    with pytest.raises(UserError) as e:
        load_detection_data(f"yolo:{root}", SIZE)
    msg = str(e.value)
    assert "\n" not in msg and "im004.txt" in msg and expect in msg, msg


@pytest.mark.parametrize("how", ["orphan label", "no names", "bad yaml", "unreadable image"])
def test_broken_yolo_folders_end_in_one_line(tmp_path, scenes, how):
    root = write_yolo(tmp_path / "yolo", scenes)
    if how == "orphan label":
        (root / "images" / "val" / "im001.png").unlink()
        expect = "im001.txt"
    elif how == "no names":
        (root / "data.yaml").write_text("nc: 10\n")
        expect = "data.yaml"
    elif how == "bad yaml":
        (root / "data.yaml").write_text("names: [a, b\n")
        expect = "data.yaml"
    else:
        (root / "images" / "test" / "im002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        expect = "im002.png"
    with pytest.raises(UserError) as e:
        load_detection_data(f"yolo:{root}", SIZE)
    msg = str(e.value)
    assert "\n" not in msg and expect in msg, msg


def test_unknown_specs_and_missing_folders(tmp_path):
    with pytest.raises(UserError, match="unknown for detection"):
        load_detection_data("mnist5k")
    with pytest.raises(UserError, match="not a folder"):
        load_detection_data(f"coco:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="instances_train.json"):
        load_detection_data(f"coco:{tmp_path / 'empty'}")
    with pytest.raises(UserError, match="data.yaml"):
        load_detection_data(f"yolo:{tmp_path / 'empty'}")
