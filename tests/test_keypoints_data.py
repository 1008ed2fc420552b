"""Keypoint data: mnist-keypoints (extreme points of real MNIST digits), COCO person_keypoints-style folders
written as PNG/JPEG and cropped per instance, augmentation that moves keypoints (and their names) with the
pixels, and one-line errors for every malformed annotation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgecnn.core.errors import UserError
from edgecnn.tasks.detection.data import INK
from edgecnn.tasks.keypoints.data import (
    COCO_NAMES,
    COCO_SIGMAS,
    CROP_MARGIN,
    DEFAULT_SIGMA,
    MNIST_KEYPOINTS,
    Instance,
    _sigmas,
    augment_keypoints,
    crop_instance,
    extreme_points,
    flip_index,
    load_keypoints_data,
    mnist_keypoints,
    pack_targets,
    unpack_targets,
)

NAMES = ["top", "bottom", "left", "right"]


# ---- mnist-keypoints ---------------------------------------------------------------------------------


def test_mnist_keypoints_are_the_extreme_ink_pixels_deterministically():
    a = mnist_keypoints(64, {"train": 60, "val": 5, "test": 20})
    b = mnist_keypoints(64, {"train": 60, "val": 5, "test": 20})
    assert torch.equal(a["train"].x, b["train"].x) and torch.equal(a["train"].y, b["train"].y)
    assert a["train"].y.shape == (60, 6, 3) and a["train"].x.shape == (60, 1, 64, 64)
    kp, boxes, areas = unpack_targets(a["train"].y)
    assert (kp[..., 2] == 2).all()
    for img, k, box in zip(a["train"].x[:, 0].numpy(), kp, boxes, strict=True):
        rows, cols = np.nonzero(img >= INK)
        (tx, ty), (bx, by), (lx, ly), (rx, ry) = k[:, :2]
        assert ty == rows.min() + 0.5 and by == rows.max() + 0.5 and lx == cols.min() + 0.5 and rx == cols.max() + 0.5
        assert tx == pytest.approx(cols[rows == rows.min()].mean() + 0.5)
        assert ly == pytest.approx(rows[cols == cols.min()].mean() + 0.5)
        np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    np.testing.assert_allclose(areas, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() < 30 and sides.max() > 40  # digits at several scales
    assert kp[:, 0, 1].std() > 5 and kp[:, 2, 0].std() > 5  # and positions: the keypoints move


def test_extreme_point_ties_take_the_mean_of_the_tied_pixels():
    img = np.zeros((10, 12), np.uint8)
    img[2, 3:8] = 200  # a flat top from x 3 to 7
    img[2:6, 3] = 200  # a left edge from y 2 to 5
    img[6, 5] = 200  # the single bottom pixel
    img[4, 9] = 64  # exactly the ink threshold: the rightmost pixel
    kp, box = extreme_points(img)
    np.testing.assert_allclose(kp, [[5.5, 2.5, 2], [5.5, 6.5, 2], [3.5, 4.0, 2], [9.5, 4.5, 2]])
    np.testing.assert_array_equal(box, [3, 2, 10, 7])


def test_mnist_keypoints_dataset_splits_and_description():
    data = load_keypoints_data("mnist-keypoints", 48, mnist_counts={"train": 30, "val": 10, "test": 12})
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 12)
    assert data.classes == MNIST_KEYPOINTS and data.num_classes == 4 and data.input_shape == (1, 48, 48)
    assert data.sigmas == [DEFAULT_SIGMA] * 4 and data.flip_index == [0, 1, 3, 2] and data.pad_value == 0
    desc = data.describe()
    assert desc["task"] == "keypoints" and desc["labelled_keypoints"] == {"train": 120, "val": 40, "test": 48}
    assert len(data.calibration(8)) == 8
    assert load_keypoints_data("mnist-keypoints", 48, sigmas=[0.1] * 4,
                               mnist_counts={"train": 4, "val": 2, "test": 2}).sigmas == [0.1] * 4


def test_flip_index_swaps_left_and_right_names():
    assert flip_index(COCO_NAMES)[:5] == [0, 2, 1, 4, 3]
    assert flip_index(["Left_Paw", "nose", "right_paw", "tail"]) == [2, 1, 0, 3]  # case-insensitive
    assert flip_index(["left", "middle", "upper_left"]) == [0, 1, 2]  # no partner: stays itself


# ---- augmentation ------------------------------------------------------------------------------------


def _blob_images(n: int, size: int = 64, seed: int = 0):
    """Images with one Gaussian blob per keypoint, keypoint j's blob peaking at 50 (j + 1)."""
    rng = np.random.default_rng(seed)
    quadrants = np.array([[0.3, 0.3], [0.7, 0.3], [0.3, 0.7], [0.7, 0.7]]) * size  # blobs apart
    pts = quadrants + rng.uniform(-4, 4, (n, 4, 2))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    imgs = np.zeros((n, 1, size, size))
    for i in range(n):
        for j, (px, py) in enumerate(pts[i]):
            blob = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 1.5**2))
            imgs[i, 0] = np.maximum(imgs[i, 0], 50 * (j + 1) * blob)
    kp = np.concatenate([pts, np.full((n, 4, 1), 2.0)], -1).astype(np.float32)
    y = pack_targets(kp, np.tile([[10.0, 10.0, 50.0, 50.0]], (n, 1)), np.full(n, 1600.0))
    return torch.from_numpy(imgs.round().astype(np.uint8)), y


def test_augmentation_moves_keypoints_and_their_names_with_the_pixels():
    x, y = _blob_images(24)
    out, y2 = augment_keypoints(x, y, torch.Generator().manual_seed(3), [0, 1, 3, 2], scale=0.2, translate=0.08,
                                pad_value=0)
    kp, boxes, areas = unpack_targets(y2)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    mirrored = 0
    for i in range(len(out)):
        img = out[i, 0].numpy().astype(np.float64)
        for j, (px, py, v) in enumerate(kp[i]):
            assert v == 2
            near = (np.abs(xx - px) < 4) & (np.abs(yy - py) < 4)
            w = img * near
            cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
            assert abs(cx - px) < 0.3 and abs(cy - py) < 0.3, (i, j, cx, px, cy, py)
        # keypoint 2 ("left") of a mirrored image is the original "right" blob (brightest, 200)
        left_peak = img[(np.abs(xx - kp[i, 2, 0]) < 2) & (np.abs(yy - kp[i, 2, 1]) < 2)].max()
        mirrored += left_peak > 170
    assert 4 < mirrored < 20  # about half flipped, each with its left and right blobs renamed
    assert (boxes[:, 0] < boxes[:, 2]).all() and (areas != 1600).all()
    zoom = np.sqrt(areas / 1600)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 40 * zoom, rtol=1e-4)


def test_flipped_digits_keep_exact_extreme_points_and_leaving_keypoints_are_unlabelled():
    s = mnist_keypoints(64, {"train": 40, "val": 1, "test": 1})["train"]
    out, y2 = augment_keypoints(s.x, s.y, torch.Generator().manual_seed(0), flip_index(MNIST_KEYPOINTS), scale=0,
                                translate=0, pad_value=0)
    assert 5 < sum(not torch.equal(a, b) for a, b in zip(out, s.x, strict=True)) < 35
    for img, row in zip(out[:, 0].numpy(), y2, strict=True):
        kp, box = extreme_points(img)
        np.testing.assert_allclose(row[:4].numpy(), kp, atol=1e-4)
        np.testing.assert_allclose(np.r_[row[4, :2], row[5, :2]], box, atol=1e-4)
    x, y = _blob_images(16)
    _, y3 = augment_keypoints(x, y, torch.Generator().manual_seed(1), [0, 1, 3, 2], scale=0, translate=0.45)
    kp, _, _ = unpack_targets(y3)
    outside = (kp[..., 0] < 0) | (kp[..., 0] > 64) | (kp[..., 1] < 0) | (kp[..., 1] > 64)
    assert outside.any() and (kp[outside][:, 2] == 0).all() and (kp[~outside][:, 2] == 2).all()


# ---- coco-keypoints:PATH -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes():
    """Images of varied sizes holding one or two 48x48 mnist-keypoints digits each, with their keypoints."""
    canvases = mnist_keypoints(48, {"train": 12, "val": 4, "test": 6})
    out = {}
    for split, s in canvases.items():
        kp, boxes, _ = unpack_targets(s.y)
        items = []
        for i in range(0, len(s), 2):
            ox, oy = 5 + 7 * (i % 3), 3 * (i % 4)
            h, w = 60 + oy, 110 + ox
            img = np.zeros((h, w), np.uint8)
            insts = []
            for j, dx in ((i, ox), (i + 1, ox + 55)):
                if j >= len(s):
                    continue
                img[oy : oy + 48, dx : dx + 48] = s.x[j, 0].numpy()
                insts.append((kp[j] + [dx, oy, 0], boxes[j] + [dx, oy, dx, oy]))
            items.append((img, insts))
        out[split] = items
    return out


def write_coco_keypoints(root, scenes, splits=("train", "val", "test"), ext=".png", sigmas=None):
    for split in splits:
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i, (img, insts) in enumerate(scenes[split]):
            name = f"im{i:03d}{ext}"
            (Image.fromarray(img).convert("RGB") if ext == ".jpg" else Image.fromarray(img)).save(folder / name)
            images.append({"id": i + 1, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
            for kp, box in insts:
                x1, y1, x2, y2 = (float(v) for v in box)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1) * 0.5,
                             "keypoints": [round(float(v), 3) for v in kp.reshape(-1)], "num_keypoints": 4})
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 5, 5],
                     "keypoints": [0] * 12, "num_keypoints": 0})  # a crowd: left out
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 9, 9],
                     "keypoints": [0] * 12, "num_keypoints": 0})  # nothing labelled: left out
        cat = {"id": 1, "name": "digit", "keypoints": NAMES, "skeleton": []}
        if sigmas is not None:
            cat["sigmas"] = sigmas
        doc = {"images": images, "annotations": anns, "categories": [cat, {"id": 7, "name": "other"}]}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(doc))
    return root


def _expected_crop(kp: np.ndarray, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    side = max(box[2] - box[0], box[3] - box[1]) * CROP_MARGIN
    left, top = (box[0] + box[2] - side) / 2, (box[1] + box[3] - side) / 2
    r = size / side
    return (kp[:, :2] - [left, top]) * r, (box - [left, top, left, top]) * r


def test_coco_keypoints_crop_each_instance_with_exact_geometry(tmp_path, scenes):
    root = write_coco_keypoints(tmp_path / "coco", scenes)
    data = load_keypoints_data(f"coco-keypoints:{root}", 64)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 6)  # crowd and unlabelled left out
    assert data.classes == NAMES and data.sigmas == [DEFAULT_SIGMA] * 4 and data.input_shape == (1, 64, 64)
    assert data.pad_value == 114 and data.flip_index == [0, 1, 3, 2]
    kp, boxes, areas = unpack_targets(data.test.y)
    flat = [inst for _, insts in scenes["test"] for inst in insts]
    for i, (k0, b0) in enumerate(flat):
        k_want, b_want = _expected_crop(k0, b0, 64)
        np.testing.assert_allclose(kp[i, :, :2], k_want, atol=2e-3)
        np.testing.assert_allclose(boxes[i], b_want, atol=1e-3)
        assert areas[i] == pytest.approx((b_want[2] - b_want[0]) * (b_want[3] - b_want[1]) * 0.5, rel=1e-4)
        # the pixels agree: the crop's own extreme ink points lie where the keypoints were mapped
        found, _ = extreme_points(data.test.x[i, 0].numpy())
        assert np.linalg.norm(found[:, :2] - kp[i, :, :2], axis=-1).mean() < 1.5


def test_crop_geometry_is_sub_pixel_exact_also_past_the_border():
    img = np.zeros((40, 50), np.uint8)
    img[2, 45] = 255  # one bright pixel near the right border, centre (45.5, 2.5)
    inst = Instance(None, np.array([30, 0, 50, 12], np.float32), np.array([[45.5, 2.5, 2]], np.float32), 120.0)
    crop, kp, box, area = crop_instance(Image.fromarray(img), inst, 75, 114)
    assert crop.shape == (75, 75) and (crop[0] == 114).all()  # above the image: gray
    assert area == pytest.approx(120.0 * (75 / 25) ** 2)
    yy, xx = np.mgrid[0:75, 0:75] + 0.5
    w = np.clip(crop.astype(np.float64) - 1, 0, None) * (np.abs(xx - kp[0, 0]) < 6) * (np.abs(yy - kp[0, 1]) < 6)
    w *= crop < 114  # the bright pixel's spread, not the gray border
    assert abs((w * xx).sum() / w.sum() - kp[0, 0]) < 0.2 and abs((w * yy).sum() / w.sum() - kp[0, 1]) < 0.2
    left, top = 40 - 12.5, 6 - 12.5  # the 25-pixel square around the box's centre (40, 6)
    np.testing.assert_allclose(box, np.array([30 - left, 0 - top, 50 - left, 12 - top]) * 3, atol=1e-4)


def test_coco_keypoints_rgb_jpegs_sigmas_and_missing_test_split(tmp_path, scenes):
    root = write_coco_keypoints(tmp_path / "rgb", scenes, splits=("train", "val"), ext=".jpg",
                                sigmas=[0.02, 0.03, 0.04, 0.05])
    data = load_keypoints_data(f"coco-keypoints:{root}", 32)
    assert data.input_shape == (3, 32, 32) and len(data.mean) == 3
    assert data.sigmas == [0.02, 0.03, 0.04, 0.05]
    assert len(data.test) == 4 and len(data.train) + len(data.val) == 12  # val became test, val held out of train
    again = load_keypoints_data(f"coco-keypoints:{root}", 32, sigmas=[0.1] * 4)
    assert again.sigmas == [0.1] * 4  # the recipe's sigmas win
    assert _sigmas(None, None, COCO_NAMES) == COCO_SIGMAS and len(COCO_SIGMAS) == 17


def _mutate(root, split, fn):
    path = root / "annotations" / f"person_keypoints_{split}.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))
    return path


def _set_kp(i, values):
    def fn(doc):
        doc["annotations"][i]["keypoints"] = values
    return fn


def _set(i, key, value):
    def fn(doc):
        doc["annotations"][i][key] = value
    return fn


def _drop_image(doc):
    doc["images"][0]["file_name"] = "gone.png"


def _cat_keypoints(value):
    def fn(doc):
        doc["categories"][0]["keypoints"] = value
    return fn


MALFORMED = [
    (_set_kp(0, [1.0] * 9), r"annotation id 1 \(im000.png\): 'keypoints' has 9 values; the category's 4 keypoints "
                            r"need 12"),
    (_set_kp(1, [10, 10, 2, 20, 20, 2, 500, 30, 2, 40, 40, 2]), r"keypoint 'left' at \(500, 30\) is outside the"),
    (_set_kp(0, [10, 10, 3, 20, 20, 2, 30, 30, 2, 40, 40, 2]), r"keypoint 'top' has visibility 3"),
    (_set_kp(0, [10, "a", 2] + [1] * 9), r"'keypoints' must be a list of 12 numbers"),
    (_set(0, "category_id", 5), r"annotation id 1: category_id 5 is not in 'categories' \(\[1, 7\]\)"),
    (_set(0, "category_id", 7), r"annotation id 1: category 7 has no 'keypoints' list"),
    (_set(0, "image_id", 99), r"annotation id 1: image_id 99 is not in 'images'"),
    (_set(0, "bbox", [0, 0, 999, 10]), r"bbox \[0, 0, 999, 10\] spans"),
    (_drop_image, r"image file .*gone.png not found"),
    (_cat_keypoints(["a", "a", "b", "c"]), r"categories\[0\] 'keypoints' must be a list of distinct names"),
    (lambda doc: doc["categories"][0].update(sigmas=[0.1, 0.1]), r"categories\[0\] 'sigmas' must be 4 positive"),
    (lambda doc: doc["categories"][0].pop("keypoints"), r"no category has a 'keypoints' list"),
]


@pytest.mark.parametrize(("fn", "message"), MALFORMED)
def test_malformed_coco_keypoints_end_in_one_line_naming_file_and_entry(tmp_path, scenes, fn, message):
    root = write_coco_keypoints(tmp_path / "bad", scenes, splits=("train",))
    path = _mutate(root, "train", fn)
    with pytest.raises(UserError, match=message) as err:
        load_keypoints_data(f"coco-keypoints:{root}", 32)
    text = str(err.value)
    assert "\n" not in text and (str(path) in text or "gone.png" in text), text


def test_unreadable_files_and_folders_end_in_one_line(tmp_path, scenes):
    root = write_coco_keypoints(tmp_path / "c", scenes, splits=("train", "val"))
    val = root / "annotations" / "person_keypoints_val.json"
    val.write_text('{"images": [], "annotations": [,]}')
    with pytest.raises(UserError, match=rf"{val}: bad JSON at line 1"):
        load_keypoints_data(f"coco-keypoints:{root}")
    val.unlink()
    (root / "train" / "im000.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"im000.png: not a readable image"):
        load_keypoints_data(f"coco-keypoints:{root}")
    with pytest.raises(UserError, match="no annotations/person_keypoints_train.json"):
        load_keypoints_data(f"coco-keypoints:{tmp_path}")
    with pytest.raises(UserError, match="not a folder"):
        load_keypoints_data(f"coco-keypoints:{tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match=r"data.sigmas: need 4 positive numbers"):
        load_keypoints_data("mnist-keypoints", sigmas=[0.1])
    with pytest.raises(UserError, match="unknown for keypoints; use mnist-keypoints or coco-keypoints:PATH"):
        load_keypoints_data("mnist5k")
