"""Keypoints with partly labelled training data: does distillation pay where labels are missing?

    python benchmarks/keypoints_partial.py          # writes benchmarks/keypoints_partial.json
    python benchmarks/keypoints_partial.py --tiny   # a check that the script runs: no JSON kept
    python benchmarks/keypoints_partial.py --keep 4 --out benchmarks/keypoints_partial_keep4.json   # the control

Keypoint files as users hold them leave many keypoints unlabelled (COCO's v = 0). The label loss
trains only labelled keypoints; the teacher's heatmaps speak for every keypoint. This benchmark
writes the mnist-keypoints canvases as a COCO-keypoints folder (PNG images and
annotations/person_keypoints_<split>.json, read back through `coco-keypoints:PATH` as a user's
data is) in which every training digit keeps 2 of its 4 extreme points, chosen at random (seeded),
and validation and test digits keep all 4. Then the same comparison as keypoints.py
(benchmarks/task_quickstart.py): the keypoints quickstart recipe (teacher trained on the partial
labels, student distilled from its heatmaps, pruned, int8) against the same student trained on the
labels alone at equal epochs, 3 seeds each. The control, `--keep 4`, runs the same folder with every
keypoint labelled: what distillation gives on these crops when no label is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from task_quickstart import HERE, main

from edgecnn.tasks.keypoints.data import MNIST_KEYPOINTS, MNIST_KEYPOINTS_SIZE, mnist_keypoints, unpack_targets

KEEP = 2  # labelled keypoints of each training digit (of 4)
FOLDER = Path(os.environ.get("EDGECNN_CACHE", Path.home() / ".cache" / "edgecnn")) / "bench" / "mnist-keypoints-partial"


def write_partial_coco(root: Path, keep: int = KEEP, seed: int = 0) -> Path:
    """mnist-keypoints as a COCO-keypoints folder, training digits with `keep` of their keypoints labelled."""
    rng = np.random.default_rng(seed)
    for split, data in mnist_keypoints(MNIST_KEYPOINTS_SIZE).items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        kps, boxes, areas = unpack_targets(data.y)
        images, anns = [], []
        for i, img in enumerate(data.x[:, 0].numpy()):
            name = f"{i:04d}.png"
            Image.fromarray(img).save(folder / name)
            images.append({"id": i + 1, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
            kp = kps[i].astype(np.float64)
            if split == "train":
                kp[rng.choice(len(kp), len(kp) - keep, replace=False)] = 0  # unlabelled: x = y = v = 0
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(areas[i]),
                         "keypoints": [round(float(v), 3) for v in kp.reshape(-1)],
                         "num_keypoints": int((kp[:, 2] > 0).sum())})
        doc = {"images": images, "annotations": anns,
               "categories": [{"id": 1, "name": "digit", "keypoints": MNIST_KEYPOINTS, "skeleton": []}]}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(doc))
    return root


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--keep", type=int, choices=range(1, len(MNIST_KEYPOINTS) + 1), default=KEEP,
                    help=f"labelled keypoints per training digit (default {KEEP}; 4: all, the control)")
    own, sys.argv[1:] = ap.parse_known_args()
    folder = write_partial_coco(FOLDER.with_name(f"{FOLDER.name}-keep{own.keep}"), own.keep)
    main("keypoints_partial", HERE.parent / "recipes" / "keypoints_quickstart.yaml",
         ("oks_ap", "oks_ap50", "oks_ap75", "pck10", "pck20"), __doc__, seeds=3,
         data={"data.spec": f"coco-keypoints:{folder}", "data.image_size": MNIST_KEYPOINTS_SIZE},
         options=f" --keep {own.keep}" if own.keep != KEEP else "")
