"""What identifies a data set's content: hashes of its decoded images and labels.

Stage keys hash the whole data set (every split and the normalisation); a report records the
evaluation split's hash, so `edgecnn compare` can refuse runs scored on different images.
"""

from __future__ import annotations

import hashlib

from edgecnn.data.datasets import Dataset, Split


def _update(h, split: Split) -> None:
    for t in (split.x, split.y):
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.contiguous().numpy().tobytes())


def data_sha256(data: Dataset) -> str:
    """A hash of the decoded data (every split's images and labels) and its normalisation."""
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        _update(h, split)
    h.update(repr((data.mean, data.std, data.classes)).encode())
    return h.hexdigest()


def eval_identity(data: Dataset, eval_samples: int | None) -> dict:
    """What a report records about its evaluation split: which split, how many images, and their hash."""
    split = data.test.head(eval_samples)
    h = hashlib.sha256()
    _update(h, split)
    return {"split": "test", "samples": len(split), "sha256": h.hexdigest()}
