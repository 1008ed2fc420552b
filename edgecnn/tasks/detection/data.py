"""Detection data specs (`mnist-detect`, `coco:PATH`, `yolo:PATH`) decoded once into uint8 tensors.

A detection data set is an `edgecnn.data.datasets.Dataset` whose splits hold letterboxed uint8
NCHW images in `x` and padded targets in `y`: float32 (N, M, 5) rows `class, x1, y1, x2, y2` in
pixels of the letterboxed image (continuous coordinates, 0..S), class -1 for padding rows. So
`Split.head`, `datasets.batches` and the train/val split work unchanged.

Specs:

- `mnist-detect`: the embedded default, no download. Canvases of `image_size` (default 96) made
  deterministically from the 5,000 real MNIST digits `mnist5k` ships: 1-4 digits per canvas,
  each resized to a side of 18-50% of the canvas and placed where its ink box overlaps no other
  by more than 15% of the smaller one; the box is the tight box of the digit's ink (pixels >= 64
  after resizing), its class the digit. Digit pools are disjoint: test canvases use the 1,000
  digits mnist5k tests on, validation canvases 400 of the rest, train canvases the other 3,600.
- `coco:PATH`: COCO instances JSON per split, `PATH/annotations/instances_<split>.json` (or
  COCO's own `instances_<split>2017.json`) for split train, val, test; images in `PATH/<split>/`
  or `PATH/images/<split>/` (or the `<split>2017` folders), `file_name` relative to that folder.
  Category ids map, sorted, to classes 0..K-1; `iscrowd` annotations are left out; images
  without annotations are kept (background).
- `yolo:PATH`: the Ultralytics layout, `PATH/data.yaml` with `names` (a list, or a dict of
  class id to name), images in `images/<split>/` and one `labels/<split>/<stem>.txt` per image
  with `class cx cy w h` lines normalised to 0..1 (a polygon line `class x1 y1 x2 y2 ...` is
  taken as its bounding box, as Ultralytics does). `train`/`val`/`test` entries of data.yaml
  naming folders (relative to PATH, Roboflow's `../train/images` too) are followed; labels sit
  where `images` is replaced by `labels` in the image folder's path. As in Ultralytics, an empty
  or missing label file means an image with no objects.

Splits: train is required. Without a validation split, validation is held out of train
(`val_fraction`); without a test split, the validation split is the test split and validation
is held out of train (COCO and most YOLO sets publish train and val only).

Images are letterboxed to `image_size` x `image_size` (default 320): resized keeping the aspect
ratio, centred, padded with gray 114 (Ultralytics' value); boxes move exactly with the pixels.
Images are single-channel when every image is, RGB otherwise. Malformed annotations (bad JSON or
YAML, boxes outside the image, unknown class ids, missing or unreadable images, malformed label
lines) raise UserError with one line naming the file and the entry.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgecnn.core.errors import UserError
from edgecnn.data.datasets import IMAGE_SUFFIXES, SPLIT_SEED, Dataset, Split, _mnist_arrays

PAD_VALUE = 114
DEFAULT_IMAGE_SIZE = 320
MNIST_DETECT_SIZE = 96
MNIST_DETECT_COUNTS = {"train": 2400, "val": 300, "test": 500}
INK = 64  # a resized digit's pixels at or above this are ink
BOX_TOLERANCE = 1.0  # pixels a box may pass the image border (rounding in annotation tools); then clipped
SPLITS = ("train", "val", "test")


@dataclass
class DetectionDataset(Dataset):
    """A detection data set: Split.y holds padded targets; `pad_value` fills letterbox and augmentation borders."""

    pad_value: int = PAD_VALUE

    def calibration(self, n: int, seed: int = SPLIT_SEED) -> Split:
        """`n` training images drawn at random (seeded): images hold several classes, so no class strata."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train), generator=g)[: min(n, len(self.train))]
        return Split(self.train.x[idx], self.train.y[idx])

    def describe(self) -> dict:
        objects = {name: int((getattr(self, name).y[..., 0] >= 0).sum()) for name in SPLITS}
        return {**super().describe(), "task": "detection", "objects": objects}


@dataclass
class Record:
    """One annotated image before decoding: its file, boxes (k, 4) xyxy in its own pixels, classes (k,)."""

    path: Path
    boxes: np.ndarray
    classes: np.ndarray


def targets_of(y: torch.Tensor | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded targets (N, M, 5) to each image's (boxes (k, 4), classes (k,))."""
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return [(rows[rows[:, 0] >= 0, 1:], rows[rows[:, 0] >= 0, 0].astype(np.int64)) for rows in y]


def pad_targets(per_image: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """Each image's (boxes, classes) to padded targets (N, M, 5), M at least 1."""
    m = max([len(c) for _, c in per_image] + [1])
    y = np.full((len(per_image), m, 5), -1.0, np.float32)
    for i, (boxes, classes) in enumerate(per_image):
        y[i, : len(classes), 0] = classes
        y[i, : len(classes), 1:] = boxes
    return torch.from_numpy(y)


# ---- letterbox and augmentation ---------------------------------------------------------------------


def letterbox_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The resized width and height and the left and top padding that letterbox an image to size x size."""
    r = min(size / width, size / height)
    new_w, new_h = max(1, round(width * r)), max(1, round(height * r))
    return new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def letterbox(image, boxes: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> tuple[np.ndarray, np.ndarray]:
    """A PIL image letterboxed to a (size, size[, 3]) uint8 array, and its xyxy boxes moved with it."""
    from PIL import Image

    w, h = image.size
    new_w, new_h, left, top = letterbox_geometry(w, h, size)
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
    canvas = np.full((size, size) + resized.shape[2:], pad_value, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    scale = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
    shift = np.array([left, top, left, top], np.float32)
    return canvas, (boxes.astype(np.float32) * scale + shift).reshape(-1, 4)


def augment_detection(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: float = 0.25,
    translate: float = 0.1,
    flip: bool = True,
    pad_value: int = PAD_VALUE,
    min_visible: float = 0.4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and scale/translate jitter of a uint8 NCHW batch, boxes moved with the pixels.

    Each image is zoomed about its centre by a factor in [1 - scale, 1 + scale] and shifted by up
    to `translate` of its side; borders are filled with `pad_value`. A box keeps its class when
    at least `min_visible` of its area stays inside the image (it is then clipped), otherwise it
    becomes padding. The same affine map moves pixels (bilinear sampling, continuous pixel
    coordinates) and boxes, so they stay aligned exactly.
    """
    n, _, h, w = x.shape
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate  # a fraction of the side
    mirror = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    sign = 1 - 2 * mirror.float()
    # the output pixel at normalised u samples the input at (u * sign - shift) / zoom
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sign / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2] = -shift[:, 0] * 2 / zoom * sign
    theta[:, 1, 2] = -shift[:, 1] * 2 / zoom
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xf = x.float() - pad_value
    out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad_value
    out = out.round().clamp(0, 255).to(torch.uint8)
    # boxes: input continuous coordinate X maps to (X - W/2) * zoom * sign + W/2 + shift * W
    y = y.clone()
    valid = y[..., 0] >= 0
    z, s = zoom.view(n, 1), sign.view(n, 1)
    cx, cy = w / 2, h / 2
    xa = (y[..., 1] - cx) * z * s + cx + shift[:, :1] * w
    xb = (y[..., 3] - cx) * z * s + cx + shift[:, :1] * w
    ya = (y[..., 2] - cy) * z + cy + shift[:, 1:] * h
    yb = (y[..., 4] - cy) * z + cy + shift[:, 1:] * h
    x1, x2 = torch.minimum(xa, xb), torch.maximum(xa, xb)
    area = (x2 - x1) * (yb - ya)
    cx1, cx2, cy1, cy2 = x1.clamp(0, w), x2.clamp(0, w), ya.clamp(0, h), yb.clamp(0, h)
    visible = (cx2 - cx1).clamp(min=0) * (cy2 - cy1).clamp(min=0)
    keep = valid & (visible >= min_visible * area) & (cx2 - cx1 >= 1) & (cy2 - cy1 >= 1)
    y[..., 1], y[..., 2], y[..., 3], y[..., 4] = cx1, cy1, cx2, cy2
    y[~keep] = -1.0
    return out, y


# ---- decoding records into splits --------------------------------------------------------------------


def _open_image(path: Path, where: str):
    from PIL import Image

    if not path.is_file():
        raise UserError(f"{where}: image file {path} not found; add it or remove its entry")
    try:
        im = Image.open(path)
        im.load()
        return im
    except Exception as e:  # noqa: BLE001 - any decoding failure (bombs, bad chunks) is a broken user file
        raise UserError(f"{path}: not a readable image ({e.__class__.__name__}); remove or replace it") from None


def _is_gray(im) -> bool:
    return im.mode in ("L", "1", "I;16", "I", "F", "LA")


def _decode_records(records: list[Record], size: int, pad_value: int, gray: bool) -> Split:
    images, targets = [], []
    for r in records:
        with _open_image(r.path, str(r.path)) as im:
            im = im.convert("L" if gray else "RGB")
            canvas, boxes = letterbox(im, r.boxes, size, pad_value)
        images.append(canvas[None] if gray else canvas.transpose(2, 0, 1))
        targets.append((np.clip(boxes, 0, size), r.classes))
    x = np.stack(images) if images else np.zeros((0, 1 if gray else 3, size, size), np.uint8)
    return Split(torch.from_numpy(np.ascontiguousarray(x)), pad_targets(targets))


def _all_gray(records: list[Record]) -> bool:
    from PIL import Image

    for r in records:
        try:
            with Image.open(r.path) as im:
                if not _is_gray(im):
                    return False
        except Exception:  # noqa: BLE001 - reported with its path when decoded
            return False
    return True


def _check_box(box: np.ndarray, width: float, height: float, where: str, shown: str) -> np.ndarray:
    """`box` (x1, y1, x2, y2 pixels) clipped to the image; UserError naming `shown` if empty or beyond it."""
    x1, y1, x2, y2 = box.tolist()
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise UserError(f"{where}: {shown} is empty or not finite; fix or remove it")
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise UserError(
            f"{where}: {shown} spans x {x1:.4g}..{x2:.4g}, y {y1:.4g}..{y2:.4g}, outside the {width:g}x{height:g} "
            "image; fix or remove it"
        )
    return np.clip(box, 0, [width, height, width, height]).astype(np.float32)


def _fmt(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in np.asarray(box, np.float64).tolist()) + "]"


def _image_size(path: Path, where: str) -> tuple[int, int]:
    from PIL import Image

    if not path.is_file():
        raise UserError(f"{where}: image file {path} not found; add it or remove its entry")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # noqa: BLE001 - any header failure is a broken user file
        raise UserError(f"{path}: not a readable image ({e.__class__.__name__}); remove or replace it") from None


# ---- coco:PATH ---------------------------------------------------------------------------------------


def _coco_files(root: Path, split: str) -> tuple[Path, Path] | None:
    """The annotation file and image folder of a split, or None when the split is absent."""
    for name in (split, f"{split}2017"):
        ann = root / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            for folder in (root / name, root / "images" / name):
                if folder.is_dir():
                    return ann, folder
            raise UserError(f"{ann}: no image folder {root / name} or {root / 'images' / name}; add the images")
    return None


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: bad JSON at line {e.lineno} column {e.colno} ({e.msg}); fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e.__class__.__name__}); fix the file") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a COCO instances file (the top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj.get(key), list):
            raise UserError(f"{path}: not a COCO instances file (no {key!r} list)")
    return obj


def _coco_categories(path: Path, obj: dict) -> tuple[list[int], list[str]]:
    cats = {}
    for i, c in enumerate(obj["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise UserError(f"{path}: categories[{i}] has no integer 'id'; fix the entry")
        cats[c["id"]] = str(c.get("name", c["id"]))
    if not cats:
        raise UserError(f"{path}: no categories; a detection set needs at least one class")
    ids = sorted(cats)
    return ids, [cats[i] for i in ids]


def _coco_records(path: Path, root: Path, folder: Path, obj: dict, cat_ids: list[int]) -> list[Record]:
    images: dict[int, dict] = {}
    for i, im in enumerate(obj["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise UserError(f"{path}: images[{i}] needs an integer 'id' and a 'file_name'; fix the entry")
        images[im["id"]] = im
    index = {c: k for k, c in enumerate(cat_ids)}
    per_image: dict[int, list[tuple[np.ndarray, int]]] = {i: [] for i in images}
    sizes: dict[int, tuple[int, int]] = {}
    files: dict[int, Path] = {}
    for i, im in images.items():
        where = f"{path}: image id {i} ({im['file_name']})"
        candidates = [folder / im["file_name"], root / im["file_name"]]
        files[i] = next((c for c in candidates if c.is_file()), candidates[0])
        sizes[i] = _image_size(files[i], where)
        declared = im.get("width"), im.get("height")
        if all(isinstance(v, (int, float)) for v in declared) and tuple(declared) != sizes[i]:
            raise UserError(
                f"{where}: the JSON says {declared[0]}x{declared[1]} but the file is {sizes[i][0]}x{sizes[i][1]}; "
                "fix width/height"
            )
    for j, a in enumerate(obj["annotations"]):
        aid = a.get("id", j) if isinstance(a, dict) else j
        where = f"{path}: annotation id {aid}"
        if not isinstance(a, dict):
            raise UserError(f"{path}: annotations[{j}] is not an object; fix the entry")
        if a.get("iscrowd", 0):
            continue
        if not isinstance(a.get("image_id"), int) or a["image_id"] not in images:
            raise UserError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'; fix or remove it")
        if not isinstance(a.get("category_id"), int) or a["category_id"] not in index:
            raise UserError(
                f"{where}: category_id {a.get('category_id')!r} is not in 'categories' ({cat_ids}); fix or remove it"
            )
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise UserError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}; fix it")
        x, y, w, h = (float(v) for v in bbox)
        im = images[a["image_id"]]
        where = f"{where} ({im['file_name']})"
        box = _check_box(np.array([x, y, x + w, y + h]), *sizes[a["image_id"]], where, f"bbox {_fmt(bbox)}")
        per_image[a["image_id"]].append((box, index[a["category_id"]]))
    return [
        Record(
            files[i],
            np.array([b for b, _ in per_image[i]], np.float32).reshape(-1, 4),
            np.array([c for _, c in per_image[i]], np.int64),
        )
        for i in sorted(images)
    ]


def read_coco(root: Path) -> tuple[dict[str, list[Record]], list[str]]:
    """Each present split's records and the class names of a COCO instances data set."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; coco:PATH needs PATH/annotations/instances_train.json and PATH/train/")
    found = {s: f for s in SPLITS if (f := _coco_files(root, s)) is not None}
    if "train" not in found:
        raise UserError(f"{root}: no annotations/instances_train.json; coco:PATH needs at least the train split")
    splits, names, ref = {}, None, None
    for split, (ann, folder) in found.items():
        obj = _read_json(ann)
        cat_ids, cat_names = _coco_categories(ann, obj)
        if ref is None:
            ref, names = (cat_ids, cat_names), cat_names
        elif (cat_ids, cat_names) != ref:
            raise UserError(f"{ann}: its categories differ from {found['train'][0].name}'s; use the same categories")
        splits[split] = _coco_records(ann, root, folder, obj, cat_ids)
    return splits, names


# ---- yolo:PATH ---------------------------------------------------------------------------------------


def _yolo_names(path: Path) -> tuple[list[str], dict]:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: bad YAML{at}; fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e.__class__.__name__}); fix the file") from None
    names = cfg.get("names") if isinstance(cfg, dict) else None
    if isinstance(names, dict):
        if not all(isinstance(k, int) for k in names) or sorted(names) != list(range(len(names))):
            raise UserError(f"{path}: 'names' must map the class ids 0..N-1 to names; got keys {sorted(names)}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: no 'names' (a list of class names, or a dict of class id to name); add it")
    nc = cfg.get("nc")
    if nc is not None and nc != len(names):
        raise UserError(f"{path}: nc is {nc} but 'names' lists {len(names)} classes; make them agree")
    return [str(n) for n in names], cfg


def _yolo_folder(root: Path, cfg: dict, split: str) -> Path | None:
    """The image folder of a split: data.yaml's entry if it names one that exists, else images/<split>."""
    keys = {"val": ("val", "valid")}.get(split, (split,))
    for key in keys:
        entry = cfg.get(key)
        if isinstance(entry, str) and entry:
            rel = Path(entry)
            inside = Path(*[p for p in rel.parts if p != ".."])  # Roboflow's ../train/images
            for cand in (root / rel, root / inside, root / str(cfg.get("path", ".")) / rel):
                if cand.is_dir():
                    return cand.resolve()
            if rel.suffix == ".txt":
                raise UserError(f"{root}/data.yaml: {key}: image list files are not supported; give a folder")
    default = root / "images" / split
    return default.resolve() if default.is_dir() else None


def _labels_folder(images: Path) -> Path:
    """Ultralytics' rule: the labels of an image folder sit where its last `images` becomes `labels`."""
    parts = list(images.parts)
    if "images" not in parts:
        raise UserError(f"{images}: a YOLO image folder must have 'images' in its path (labels sit in 'labels')")
    at = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:at], "labels", *parts[at + 1 :])


def _yolo_labels(path: Path, width: int, height: int, nc: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable label file ({e.__class__.__name__}); fix it") from None
    boxes, classes = [], []
    lines = text.splitlines()
    filled = [n for n, line in enumerate(lines) if line.strip()]
    for n, line in enumerate(lines[filled[0] : filled[-1] + 1] if filled else [], filled[0] + 1 if filled else 1):
        if not line.strip():
            raise UserError(f"{path}: line {n} is empty; a label line is 'class cx cy w h' (remove the blank line)")
        where = f"{path}: line {n} ({line.strip()[:60]!r})"
        parts = line.split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise UserError(f"{where}: not numbers; a label line is 'class cx cy w h'") from None
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise UserError(f"{where}: {len(values)} values; a label line is 'class cx cy w h' (or a polygon)")
        c = values[0]
        if c != int(c) or not 0 <= c < nc:
            raise UserError(f"{where}: class {parts[0]} is not one of the {nc} classes of data.yaml (0..{nc - 1})")
        if not all(math.isfinite(v) for v in values):
            raise UserError(f"{where}: not finite; a label line is 'class cx cy w h' normalised to 0..1")
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            norm = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        else:
            xs, ys = np.array(values[1::2]), np.array(values[2::2])
            norm = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
        tol = 1e-3
        if (norm < -tol).any() or (norm > 1 + tol).any():
            raise UserError(f"{where}: coordinates outside 0..1; YOLO labels are normalised to the image size")
        box = _check_box(norm * [width, height, width, height], width, height, where, "the box")
        boxes.append(box)
        classes.append(int(c))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def read_yolo(root: Path) -> tuple[dict[str, list[Record]], list[str]]:
    """Each present split's records and the class names of an Ultralytics YOLO data set."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; yolo:PATH needs PATH/data.yaml, PATH/images/train, PATH/labels/train")
    yaml_path = next((root / n for n in ("data.yaml", "data.yml", "dataset.yaml") if (root / n).is_file()), None)
    if yaml_path is None:
        raise UserError(f"{root}: no data.yaml; yolo:PATH needs one with the class 'names'")
    names, cfg = _yolo_names(yaml_path)
    folders = {s: f for s in SPLITS if (f := _yolo_folder(root, cfg, s)) is not None}
    if "train" not in folders:
        raise UserError(f"{root}: no images/train folder; yolo:PATH needs at least the train split")
    for s in ("val", "test"):
        if folders.get(s) == folders["train"]:
            folders.pop(s)  # a split that is train's own images is no held-out split
    splits = {}
    for split, folder in folders.items():
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise UserError(f"{folder}: no images; put the {split} images there or remove the folder")
        label_root = _labels_folder(folder)
        records = []
        for p in images:
            label = (label_root / p.relative_to(folder)).with_suffix(".txt")
            boxes, classes = _yolo_labels(label, *_image_size(p, str(label)), len(names))
            records.append(Record(p, boxes, classes))
        stems = {p.relative_to(folder).with_suffix("") for p in images}
        if label_root.is_dir():
            for lab in sorted(label_root.rglob("*.txt")):
                if lab.relative_to(label_root).with_suffix("") not in stems:
                    raise UserError(f"{lab}: no image for this label file in {folder}; add the image or remove it")
        splits[split] = records
    return splits, names


# ---- mnist-detect ------------------------------------------------------------------------------------


def digit_pools() -> dict[str, np.ndarray]:
    """Disjoint indices into mnist5k's 5,000 digits: test (mnist5k's own 1,000 test digits), val (400), train."""
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    return {"test": order[:1000], "val": order[1000:1400], "train": order[1400:]}


def _canvas(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, pool: np.ndarray, size: int):
    from PIL import Image

    canvas = np.zeros((size, size), np.uint8)
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.choice(pool))
        side = max(10, int(round(size * rng.uniform(0.18, 0.5))))
        patch = np.asarray(Image.fromarray(digits[k]).resize((side, side), Image.Resampling.BILINEAR))
        rows, cols = np.nonzero(patch >= INK)
        if not len(rows):
            continue
        patch = patch[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        h, w = patch.shape
        for _try in range(30):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array([x, y, x + w, y + h], np.float32)
            if not boxes:
                break
            inter = _intersection(box, np.array(boxes))
            smaller = np.minimum((box[2] - box[0]) * (box[3] - box[1]), _areas(np.array(boxes)))
            if (inter <= 0.15 * smaller).all():
                break
        else:
            continue
        canvas[y : y + h, x : x + w] = np.maximum(canvas[y : y + h, x : x + w], patch)
        boxes.append(box)
        classes.append(int(labels[k]))
    return canvas, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def _areas(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _intersection(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    return w * h


def mnist_detect(size: int = MNIST_DETECT_SIZE, counts: dict[str, int] | None = None) -> dict[str, Split]:
    """The embedded detection set: `counts` canvases per split of size x size, composed deterministically."""
    if size < 32:
        raise UserError(f"data.image_size {size}: mnist-detect needs canvases of at least 32 pixels")
    counts = {**MNIST_DETECT_COUNTS, **(counts or {})}
    digits, labels = _mnist_arrays()
    digits = digits[:, 0]
    pools = digit_pools()
    splits = {}
    for i, split in enumerate(SPLITS):
        rng = np.random.default_rng([SPLIT_SEED, i, size])
        made = [_canvas(rng, digits, labels, pools[split], size) for _ in range(counts[split])]
        x = np.stack([c for c, _, _ in made])[:, None] if made else np.zeros((0, 1, size, size), np.uint8)
        splits[split] = Split(torch.from_numpy(x), pad_targets([(b, c) for _, b, c in made]))
    return splits


# ---- the entry point ---------------------------------------------------------------------------------


def _hold_out(split: Split, fraction: float) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(split), generator=g)
    n_val = int(round(len(split) * fraction))
    return Split(split.x[order[n_val:]], split.y[order[n_val:]]), Split(split.x[order[:n_val]], split.y[order[:n_val]])


def _complete(splits: dict[str, Split], val_fraction: float, spec: str) -> tuple[Split, Split, Split]:
    train = splits["train"]
    if "test" not in splits and "val" in splits:
        splits["test"] = splits.pop("val")
    if "test" not in splits:
        raise UserError(f"data {spec}: no val or test split; add one (images and annotations) to evaluate on")
    if "val" not in splits:
        if val_fraction <= 0:
            raise UserError(f"data {spec}: no validation split and data.val_fraction is 0; set it above 0")
        train, splits["val"] = _hold_out(train, val_fraction)
    return train, splits["val"], splits["test"]


def load_detection_data(
    spec: str,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    mnist_counts: dict[str, int] | None = None,
) -> DetectionDataset:
    """Load a detection data spec; malformed data raises UserError naming the file and entry."""
    pad = PAD_VALUE
    if spec == "mnist-detect":
        splits, classes, pad = mnist_detect(image_size or MNIST_DETECT_SIZE, mnist_counts), list("0123456789"), 0
    elif m := re.fullmatch(r"(coco|yolo):(.+)", spec):
        root = Path(m.group(2)).expanduser()
        records, classes = (read_coco if m.group(1) == "coco" else read_yolo)(root)
        size = image_size or DEFAULT_IMAGE_SIZE
        gray = _all_gray([r for rs in records.values() for r in rs])
        splits = {s: _decode_records(rs, size, pad, gray) for s, rs in records.items()}
    else:
        raise UserError(f"data spec {spec!r} is unknown for detection; use mnist-detect, coco:PATH or yolo:PATH")
    train, val, test = _complete(splits, val_fraction, spec)
    if mean is None or std is None:
        pix = train.x[:2000].float() / 255.0
        mean = mean or pix.mean(dim=(0, 2, 3)).tolist()
        std = std or [max(s, 1e-3) for s in pix.std(dim=(0, 2, 3)).tolist()]
    channels = train.x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"data.mean/data.std: need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    return DetectionDataset(spec, train, val, test, list(mean), list(std), list(classes), pad)
