"""Keypoint data specs (`mnist-keypoints`, `coco-keypoints:PATH`) decoded once into uint8 tensors.

A keypoint data set is an `edgecnn.data.datasets.Dataset` with one instance per image: splits hold
uint8 NCHW images in `x` and float32 targets (N, K + 2, 3) in `y`, in pixels of the model input
(continuous coordinates, 0..S): rows 0..K-1 are the keypoints `x, y, v` (COCO's visibility:
0 unlabelled, 1 labelled but occluded, 2 visible), row K is `x1, y1, area` and row K+1
`x2, y2, 0`: the instance's box corners and its area (what OKS scales distances by). The data
set's `classes` are the K keypoint names, `sigmas` their OKS constants, `flip_index` the keypoint
each one becomes in a mirror image (left_eye <-> right_eye: names with left and right swapped).

Specs:

- `mnist-keypoints`: the embedded default, no download. One real MNIST digit of the 5,000
  `mnist5k` ships per canvas of `image_size` (default 64), resized to 50-100% of the canvas and
  placed at a random position, composed deterministically; its keypoints are its four extreme
  points (the keypoints of ExtremeNet, Zhou et al. 2019): the topmost, bottommost, leftmost and
  rightmost ink pixels (>= 64), where several pixels tie the mean of them, at pixel centres; its
  box is the tight box of the ink, its area the box's. Digit pools are disjoint (as mnist-detect's:
  test canvases use the 1,000 digits mnist5k tests on, validation 400 of the rest, train the
  other 3,600), one canvas per pool digit.
- `coco-keypoints:PATH`: COCO person_keypoints-style JSON per split,
  `PATH/annotations/person_keypoints_<split>.json` (or `keypoints_<split>.json`, or COCO's own
  `..._<split>2017.json`) for split train, val, test; images in `PATH/<split>/` or
  `PATH/images/<split>/` (or the `<split>2017` folders). The categories with a `keypoints` list
  name the keypoints (all of them the same list); per-keypoint `sigmas` come from the recipe, else
  from the category's `sigmas` entry, else COCO's own when the names are COCO's 17, else 0.05
  each. Every annotation with at least one labelled keypoint (`iscrowd` ones left out) becomes one
  crop: a square of 1.25 times its box's longer side around the box's centre (outside the image
  gray 114), resized to `image_size` (default 128) with its keypoints, box and area mapped exactly;
  labelled keypoints the crop leaves out become unlabelled.

Splits: as detection's (train required; a missing validation split is held out of train, a
missing test split is the validation split). Images are single-channel when every image is, RGB
otherwise. Malformed annotations (bad JSON, a wrong keypoint count, keypoints outside the image,
visibilities other than 0/1/2, unknown categories, missing or unreadable images) raise UserError
with one line naming the file and the entry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgecnn.core.errors import UserError
from edgecnn.data.datasets import SPLIT_SEED, Dataset, Split, _mnist_arrays
from edgecnn.tasks.detection.data import (
    INK,
    PAD_VALUE,
    SPLITS,
    _all_gray,
    _check_box,
    _complete,
    _fmt,
    _image_size,
    _open_image,
    _read_json,
    digit_pools,
)

MNIST_KEYPOINTS = ["top", "bottom", "left", "right"]
MNIST_KEYPOINTS_SIZE = 64
MNIST_SCALE = (0.5, 1.0)  # a digit's 28-pixel cell is resized to this share of the canvas side
DEFAULT_IMAGE_SIZE = 128
DEFAULT_SIGMA = 0.05
CROP_MARGIN = 1.25  # a crop's side is this times the box's longer side
POINT_TOLERANCE = 1.0  # pixels a labelled keypoint may pass the image border (annotation tools round)
COCO_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
]
COCO_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089]


@dataclass
class KeypointsDataset(Dataset):
    """A keypoint data set: Split.y holds (N, K + 2, 3) targets, `classes` the keypoint names."""

    sigmas: list[float] = field(default_factory=list)
    flip_index: list[int] = field(default_factory=list)
    pad_value: int = PAD_VALUE

    def calibration(self, n: int, seed: int = SPLIT_SEED) -> Split:
        """`n` training images drawn at random, seeded (targets have no classes to stratify by)."""
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.train.x[order], self.train.y[order])

    def describe(self) -> dict:
        labelled = {name: int((getattr(self, name).y[:, :-2, 2] > 0).sum()) for name in SPLITS}
        return {**super().describe(), "task": "keypoints", "sigmas": self.sigmas, "labelled_keypoints": labelled}


# ---- targets -----------------------------------------------------------------------------------------


def pack_targets(keypoints: np.ndarray, boxes: np.ndarray, areas: np.ndarray) -> torch.Tensor:
    """Keypoints (N, K, 3), boxes (N, 4) xyxy and areas (N,) to targets (N, K + 2, 3)."""
    n, k = len(keypoints), np.shape(keypoints)[1] if len(keypoints) else 0
    y = np.zeros((n, k + 2, 3), np.float32)
    y[:, :k] = keypoints
    y[:, k, :2], y[:, k + 1, :2] = np.reshape(boxes, (n, 4))[:, :2], np.reshape(boxes, (n, 4))[:, 2:]
    y[:, k, 2] = areas
    return torch.from_numpy(y)


def unpack_targets(y: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets (N, K + 2, 3) to keypoints (N, K, 3), boxes (N, 4) xyxy and areas (N,), as numpy."""
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y, np.float32)
    return y[:, :-2], np.concatenate([y[:, -2, :2], y[:, -1, :2]], 1), y[:, -2, 2]


def flip_index(names: list[str]) -> list[int]:
    """For each keypoint, the index of the one it becomes in a mirror image (left and right swapped in its name)."""
    lower = [n.lower() for n in names]
    swap = {"left": "right", "right": "left"}
    partners = [re.sub("left|right", lambda m: swap[m.group()], n) for n in lower]
    return [lower.index(p) if p in lower else i for i, p in enumerate(partners)]


# ---- augmentation ------------------------------------------------------------------------------------


def augment_keypoints(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    flip_index: list[int],
    *,
    scale: float = 0.25,
    translate: float = 0.1,
    flip: bool = True,
    pad_value: int = PAD_VALUE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and scale/translate jitter of a uint8 NCHW batch, keypoints moved with the pixels.

    Each image is zoomed about its centre by a factor in [1 - scale, 1 + scale] and shifted by up
    to `translate` of its side (borders `pad_value`); the same affine map moves pixels (bilinear
    sampling, continuous coordinates) and points, so they stay aligned exactly. A mirrored image's
    keypoints trade places by `flip_index` (its left eye is the right eye); keypoints that leave
    the image become unlabelled; the box is re-formed from its moved corners, the area scaled.
    """
    n, _, h, w = x.shape
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate
    mirror = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    sign = 1 - 2 * mirror.float()
    theta = torch.zeros(n, 2, 3)  # the output pixel at normalised u samples the input at (u * sign - shift) / zoom
    theta[:, 0, 0] = sign / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2] = -shift[:, 0] * 2 / zoom * sign
    theta[:, 1, 2] = -shift[:, 1] * 2 / zoom
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float() - pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = (out + pad_value).round().clamp(0, 255).to(torch.uint8)
    # points: input X maps to (X - W/2) * zoom * sign + W/2 + shift * W
    y = y.clone()
    k = y.shape[1] - 2
    z, s = zoom.view(n, 1), sign.view(n, 1)
    y[..., 0] = (y[..., 0] - w / 2) * z * s + w / 2 + shift[:, :1] * w
    y[..., 1] = (y[..., 1] - h / 2) * z + h / 2 + shift[:, 1:] * h
    perm = torch.as_tensor(flip_index + [k, k + 1], dtype=torch.long)
    y[mirror] = y[mirror][:, perm]
    kp = y[:, :k]
    outside = (kp[..., 0] < 0) | (kp[..., 0] > w) | (kp[..., 1] < 0) | (kp[..., 1] > h)
    kp[..., 2] = torch.where(outside, torch.zeros_like(kp[..., 2]), kp[..., 2])
    xa, xb = y[:, k, 0].clone(), y[:, k + 1, 0].clone()
    y[:, k, 0], y[:, k + 1, 0] = torch.minimum(xa, xb), torch.maximum(xa, xb)
    y[:, k, 2] = y[:, k, 2] * zoom**2
    return out, y


# ---- mnist-keypoints ---------------------------------------------------------------------------------


def extreme_points(image: np.ndarray, ink: int = INK) -> tuple[np.ndarray, np.ndarray]:
    """The top, bottom, left and right ink pixels of a 2-d image (ties: their mean), at pixel centres,
    as keypoints (4, 3) with visibility 2, and the tight ink box (4,) xyxy."""
    rows, cols = np.nonzero(image >= ink)
    if not len(rows):
        raise ValueError("no ink in the image")
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    pts = [
        (cols[rows == r0].mean(), r0),
        (cols[rows == r1].mean(), r1),
        (c0, rows[cols == c0].mean()),
        (c1, rows[cols == c1].mean()),
    ]
    kp = np.array([(px + 0.5, py + 0.5, 2.0) for px, py in pts], np.float32)
    return kp, np.array([c0, r0, c1 + 1, r1 + 1], np.float32)


def _digit_canvas(rng: np.random.Generator, digit: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    side = max(12, int(round(size * rng.uniform(*MNIST_SCALE))))
    patch = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
    canvas = np.zeros((size, size), np.uint8)
    x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    canvas[y0 : y0 + side, x0 : x0 + side] = patch
    return canvas


def mnist_keypoints(size: int = MNIST_KEYPOINTS_SIZE, counts: dict[str, int] | None = None) -> dict[str, Split]:
    """The embedded keypoint set: one canvas per digit of each split's pool (or `counts` of them), deterministic."""
    if size < 24:
        raise UserError(f"data.image_size {size}: mnist-keypoints needs canvases of at least 24 pixels")
    digits = _mnist_arrays()[0][:, 0]
    pools = digit_pools()
    splits = {}
    for i, split in enumerate(SPLITS):
        rng = np.random.default_rng([SPLIT_SEED, 17, i, size])
        pool = pools[split]
        n = len(pool) if counts is None or split not in counts else counts[split]
        canvases, kps, boxes = [], [], []
        for j in range(n):
            canvas = _digit_canvas(rng, digits[pool[j % len(pool)]], size)
            kp, box = extreme_points(canvas)
            canvases.append(canvas)
            kps.append(kp)
            boxes.append(box)
        x = np.stack(canvases)[:, None] if canvases else np.zeros((0, 1, size, size), np.uint8)
        kp_arr = np.stack(kps) if kps else np.zeros((0, 4, 3), np.float32)
        box_arr = np.stack(boxes) if boxes else np.zeros((0, 4), np.float32)
        area = (box_arr[:, 2] - box_arr[:, 0]) * (box_arr[:, 3] - box_arr[:, 1])
        splits[split] = Split(torch.from_numpy(x), pack_targets(kp_arr, box_arr, area))
    return splits


# ---- coco-keypoints:PATH -----------------------------------------------------------------------------


@dataclass
class Instance:
    """One annotated instance before cropping: its image file, box (4,) xyxy, keypoints (K, 3), area, in its pixels."""

    path: Path
    box: np.ndarray
    keypoints: np.ndarray
    area: float


def _keypoint_files(root: Path, split: str) -> tuple[Path, Path] | None:
    """The annotation file and image folder of a split, or None when the split is absent."""
    for name in (split, f"{split}2017"):
        for stem in ("person_keypoints", "keypoints"):
            ann = root / "annotations" / f"{stem}_{name}.json"
            if ann.is_file():
                for folder in (root / name, root / "images" / name):
                    if folder.is_dir():
                        return ann, folder
                raise UserError(f"{ann}: no image folder {root / name} or {root / 'images' / name}; add the images")
    return None


def _keypoint_categories(path: Path, obj: dict) -> tuple[dict[int, bool], list[str], list[float] | None]:
    """Category ids (True where the category has keypoints), the keypoint names and the file's sigmas if any."""
    cats: dict[int, bool] = {}
    names, sigmas = None, None
    for i, c in enumerate(obj["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise UserError(f"{path}: categories[{i}] has no integer 'id'; fix the entry")
        kps = c.get("keypoints")
        cats[c["id"]] = kps is not None
        if kps is None:
            continue
        if not isinstance(kps, list) or not kps or not all(isinstance(n, str) for n in kps) or len(set(kps)) < len(kps):
            raise UserError(f"{path}: categories[{i}] 'keypoints' must be a list of distinct names; fix the entry")
        if names is not None and kps != names:
            raise UserError(f"{path}: categories[{i}] lists other keypoints than an earlier category; use one list")
        names = kps
        if "sigmas" in c:
            sig = c["sigmas"]
            if not isinstance(sig, list) or len(sig) != len(kps) or not all(_positive(v) for v in sig):
                raise UserError(f"{path}: categories[{i}] 'sigmas' must be {len(kps)} positive numbers; fix the entry")
            sigmas = [float(v) for v in sig]
    if names is None:
        raise UserError(f"{path}: no category has a 'keypoints' list; a keypoints file names its keypoints there")
    return cats, names, sigmas


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_keypoints(values, names: list[str], width: int, height: int, where: str) -> np.ndarray:
    k = len(names)
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where}: 'keypoints' must be a list of {3 * k} numbers (x, y, v per keypoint); fix it")
    if len(values) != 3 * k:
        raise UserError(f"{where}: 'keypoints' has {len(values)} values; the category's {k} keypoints need {3 * k} "
                        "(x, y, v each); fix it")
    kp = np.array(values, np.float64).reshape(k, 3)
    for j, (px, py, v) in enumerate(kp.tolist()):
        if v not in (0, 1, 2):
            raise UserError(f"{where}: keypoint {names[j]!r} has visibility {v:g}; COCO's are 0, 1 or 2; fix it")
        t = POINT_TOLERANCE
        if v > 0 and not (math.isfinite(px) and math.isfinite(py) and -t <= px <= width + t and -t <= py <= height + t):
            raise UserError(f"{where}: keypoint {names[j]!r} at ({px:.4g}, {py:.4g}) is outside the {width}x{height} "
                            "image; fix or unlabel it (v = 0)")
    kp[:, :2] = np.clip(kp[:, :2], 0, [width, height])
    kp[kp[:, 2] == 0, :2] = 0
    return kp.astype(np.float32)


def _instances(path: Path, root: Path, folder: Path, obj: dict) -> tuple[list[Instance], list[str], list[float] | None]:
    cats, names, sigmas = _keypoint_categories(path, obj)
    images: dict[int, dict] = {}
    for i, im in enumerate(obj["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise UserError(f"{path}: images[{i}] needs an integer 'id' and a 'file_name'; fix the entry")
        images[im["id"]] = im
    files: dict[int, Path] = {}
    sizes: dict[int, tuple[int, int]] = {}
    out = []
    for j, a in enumerate(obj["annotations"]):
        if not isinstance(a, dict):
            raise UserError(f"{path}: annotations[{j}] is not an object; fix the entry")
        where = f"{path}: annotation id {a.get('id', j)}"
        if a.get("iscrowd", 0):
            continue
        if not isinstance(a.get("image_id"), int) or a["image_id"] not in images:
            raise UserError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'; fix or remove it")
        cat = a.get("category_id")
        if not isinstance(cat, int) or cat not in cats:
            raise UserError(f"{where}: category_id {cat!r} is not in 'categories' ({sorted(cats)}); fix or remove it")
        if not cats[cat]:
            raise UserError(f"{where}: category {cat} has no 'keypoints' list; remove the annotation or name them")
        im = images[a["image_id"]]
        where = f"{where} ({im['file_name']})"
        i = a["image_id"]
        if i not in files:
            candidates = [folder / im["file_name"], root / im["file_name"]]
            files[i] = next((c for c in candidates if c.is_file()), candidates[0])
            sizes[i] = _image_size(files[i], where)
        width, height = sizes[i]
        kp = _check_keypoints(a.get("keypoints"), names, width, height, where)
        if not (kp[:, 2] > 0).any():
            continue  # no labelled keypoint: nothing to learn or score (COCO has many such boxes)
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise UserError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}; fix it")
        x, y, w, h = (float(v) for v in bbox)
        box = _check_box(np.array([x, y, x + w, y + h]), width, height, where, f"bbox {_fmt(bbox)}")
        area = a.get("area")
        area = float(area) if _positive(area) else float((box[2] - box[0]) * (box[3] - box[1]))
        out.append(Instance(files[i], box, kp, area))
    return out, names, sigmas


def read_coco_keypoints(root: Path) -> tuple[dict[str, list[Instance]], list[str], list[float] | None]:
    """Each present split's instances, the keypoint names and the file's sigmas (None if it has none)."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; coco-keypoints:PATH needs PATH/annotations/person_keypoints_train.json "
                        "and PATH/train/")
    found = {s: f for s in SPLITS if (f := _keypoint_files(root, s)) is not None}
    if "train" not in found:
        raise UserError(f"{root}: no annotations/person_keypoints_train.json; coco-keypoints:PATH needs at least "
                        "the train split")
    splits, ref = {}, None
    for split, (ann, folder) in found.items():
        instances, names, sigmas = _instances(ann, root, folder, _read_json(ann))
        if ref is None:
            ref = (names, sigmas)
        elif names != ref[0]:
            raise UserError(f"{ann}: its keypoints differ from {found['train'][0].name}'s; use the same keypoints")
        if not instances:
            raise UserError(f"{ann}: no annotation with a labelled keypoint; add some or remove the file")
        splits[split] = instances
    return splits, ref[0], ref[1]


def crop_instance(image, inst: Instance, size: int, pad_value: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A PIL image's square crop around `inst` (CROP_MARGIN) resized to size x size, and its keypoints (K, 3),
    box (4,) and area in the crop's pixels; labelled keypoints outside the crop become unlabelled."""
    from PIL import Image

    x1, y1, x2, y2 = inst.box.tolist()
    side = max(x2 - x1, y2 - y1, 1.0) * CROP_MARGIN
    left, top = (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2
    fl, ft = math.floor(left), math.floor(top)
    cw, ch = math.ceil(left + side) - fl, math.ceil(top + side) - ft
    fill = pad_value if image.mode == "L" else (pad_value,) * 3
    region = Image.new(image.mode, (cw, ch), fill)
    region.paste(image, (-fl, -ft))  # the image's pixels in the region's frame; the rest stays `fill`
    box = (left - fl, top - ft, left - fl + side, top - ft + side)
    crop = np.asarray(region.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    r = size / side
    kp = inst.keypoints.copy()
    kp[:, 0], kp[:, 1] = (kp[:, 0] - left) * r, (kp[:, 1] - top) * r
    out = (kp[:, 0] < 0) | (kp[:, 0] > size) | (kp[:, 1] < 0) | (kp[:, 1] > size)
    kp[out | (kp[:, 2] == 0)] = 0
    box_c = (inst.box - [left, top, left, top]) * r
    return crop, kp.astype(np.float32), box_c.astype(np.float32), inst.area * r * r


def _decode_instances(instances: list[Instance], k: int, size: int, pad_value: int, gray: bool) -> Split:
    images, kps, boxes, areas = [], [], [], []
    by_file: dict[Path, list[int]] = {}
    for i, inst in enumerate(instances):
        by_file.setdefault(inst.path, []).append(i)
    crops: list = [None] * len(instances)
    for path, idx in by_file.items():
        with _open_image(path, str(path)) as im:
            im = im.convert("L" if gray else "RGB")
            for i in idx:
                crops[i] = crop_instance(im, instances[i], size, pad_value)
    for crop, kp, box, area in crops:
        images.append(crop[None] if gray else crop.transpose(2, 0, 1))
        kps.append(kp)
        boxes.append(box)
        areas.append(area)
    x = np.stack(images) if images else np.zeros((0, 1 if gray else 3, size, size), np.uint8)
    kp_arr = np.stack(kps) if kps else np.zeros((0, k, 3), np.float32)
    return Split(torch.from_numpy(np.ascontiguousarray(x)),
                 pack_targets(kp_arr, np.array(boxes, np.float32).reshape(-1, 4), np.array(areas, np.float32)))


# ---- the entry point ---------------------------------------------------------------------------------


def _sigmas(recipe: list[float] | None, from_file: list[float] | None, names: list[str]) -> list[float]:
    if recipe is not None:
        if len(recipe) != len(names) or not all(_positive(v) for v in recipe):
            raise UserError(f"data.sigmas: need {len(names)} positive numbers (one per keypoint: {', '.join(names)}), "
                            f"got {list(recipe)}")
        return [float(v) for v in recipe]
    if from_file is not None:
        return from_file
    return list(COCO_SIGMAS) if names == COCO_NAMES else [DEFAULT_SIGMA] * len(names)


def load_keypoints_data(
    spec: str,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    sigmas: list[float] | None = None,
    mnist_counts: dict[str, int] | None = None,
) -> KeypointsDataset:
    """Load a keypoint data spec; malformed data raises UserError naming the file and entry."""
    pad = PAD_VALUE
    if spec == "mnist-keypoints":
        sig = _sigmas(sigmas, None, list(MNIST_KEYPOINTS))  # a wrong count fails before the canvases are composed
        splits, names, pad = mnist_keypoints(image_size or MNIST_KEYPOINTS_SIZE, mnist_counts), MNIST_KEYPOINTS, 0
    elif spec.startswith("coco-keypoints:"):
        root = Path(spec.split(":", 1)[1]).expanduser()
        instances, names, file_sigmas = read_coco_keypoints(root)
        sig = _sigmas(sigmas, file_sigmas, list(names))
        size = image_size or DEFAULT_IMAGE_SIZE
        if size < 16:
            raise UserError(f"data.image_size {size}: keypoint crops need at least 16 pixels")
        gray = _all_gray([inst for insts in instances.values() for inst in insts])
        splits = {s: _decode_instances(v, len(names), size, pad, gray) for s, v in instances.items()}
    else:
        raise UserError(f"data spec {spec!r} is unknown for keypoints; use mnist-keypoints or coco-keypoints:PATH")
    train, val, test = _complete(splits, val_fraction, spec)
    if mean is None or std is None:
        pix = train.x[:2000].float() / 255.0
        mean = mean or pix.mean(dim=(0, 2, 3)).tolist()
        std = std or [max(s, 1e-3) for s in pix.std(dim=(0, 2, 3)).tolist()]
    channels = train.x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"data.mean/data.std: need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    return KeypointsDataset(spec, train, val, test, list(mean), list(std), list(names), sig, flip_index(list(names)),
                            pad)
