"""The numpy detection decoder: standalone (numpy only), exact box decoding, class-aware NMS, thresholds."""

from __future__ import annotations

import ast
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgecnn.tasks.detection import decode as dd

HEAD = {"kind": "center_size", "strides": [8, 16], "num_classes": 3, "input_size": [32, 32]}
L = 4 * 4 + 2 * 2


def _raw(n: int = 1) -> np.ndarray:
    """Raw outputs in which nothing is detected: every class logit very low, quality high."""
    raw = np.zeros((n, L, 8), np.float32)
    raw[..., 4] = 20.0
    raw[..., 5:] = -20.0
    return raw


def _put(raw, image, loc, dx, dy, w_strides, h_strides, cls, logit):
    raw[image, loc, :4] = [dx, dy, math.log(w_strides), math.log(h_strides)]
    raw[image, loc, 5 + cls] = logit


def test_decoder_imports_only_numpy_and_runs_alone(tmp_path):
    """It is shipped beside the device agent: no edgecnn import, and it works as a lone file."""
    tree = ast.parse(open(dd.__file__).read())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= {"__future__", "math", "dataclasses", "numpy"}, roots
    shutil.copy(dd.__file__, tmp_path / "detect_decode.py")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import numpy as np, detect_decode as d;"
        "raw = np.zeros((1, 20, 8), np.float32); raw[0, 5, 5] = 9; raw[0, 5, 4] = 9;"
        "h = {'kind': 'center_size', 'strides': [8, 16], 'num_classes': 3, 'input_size': [32, 32]};"
        "out = d.decode(raw, h); assert 'edgecnn' not in sys.modules; print(len(out[0]), out[0].classes[0])"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "0"


def test_locations_follow_the_output_order():
    centers, strides = dd.locations([8, 16], [32, 48])
    assert len(centers) == 4 * 6 + 2 * 3
    assert centers[0].tolist() == [4.0, 4.0] and centers[1].tolist() == [12.0, 4.0]  # row-major
    assert centers[6].tolist() == [4.0, 12.0]
    assert centers[24].tolist() == [8.0, 8.0] and strides[24] == 16 and strides[23] == 8


def test_boxes_decode_exactly_and_scores_combine_class_and_quality():
    raw = _raw()
    # level 0, row 1, column 2: centre (20, 12); offset (+0.25, -0.5) strides; size 1.5 x 2 strides
    _put(raw, 0, 1 * 4 + 2, 0.25, -0.5, 1.5, 2.0, cls=1, logit=3.0)
    # level 1, row 1, column 0: centre (8, 24); a 1 x 1-stride box of class 2
    _put(raw, 0, 16 + 2, 0.0, 0.0, 1.0, 1.0, cls=2, logit=1.0)
    raw[0, 18, 4] = 0.0  # quality 0.5 there
    (det,) = dd.decode(raw, HEAD)
    assert det.classes.tolist() == [1, 2]
    np.testing.assert_allclose(det.boxes, [[16, 0, 28, 16], [0, 16, 16, 32]], atol=1e-4)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    np.testing.assert_allclose(det.scores, [math.sqrt(sig(3) * sig(20)), math.sqrt(sig(1) * 0.5)], rtol=1e-5)


def test_boxes_are_clipped_to_the_image():
    raw = _raw()
    _put(raw, 0, 0, -1.0, -1.0, 2.0, 2.0, cls=0, logit=5.0)  # centre (-4, -4), 16 x 16
    (det,) = dd.decode(raw, HEAD)
    np.testing.assert_allclose(det.boxes, [[0, 0, 4, 4]], atol=1e-4)


def test_nms_is_class_aware():
    raw = _raw()
    _put(raw, 0, 5, 0.0, 0.0, 2.0, 2.0, cls=0, logit=4.0)  # centre (12, 12)
    _put(raw, 0, 6, -0.9, 0.0, 2.0, 2.0, cls=0, logit=3.0)  # centre (12.8, 12): IoU 0.9 with the first
    _put(raw, 0, 9, 0.0, -0.9, 2.0, 2.0, cls=1, logit=2.0)  # the same place, another class
    (det,) = dd.decode(raw, HEAD)
    assert det.classes.tolist() == [0, 1] and len(det) == 2
    (loose,) = dd.decode(raw, HEAD, iou_threshold=0.95)
    assert len(loose) == 3


def test_score_threshold_and_max_detections():
    raw = _raw(2)
    for loc in range(16):  # 16 well separated boxes (one per level-0 cell), scores falling with loc
        _put(raw, 0, loc, 0.0, 0.0, 0.5, 0.5, cls=loc % 3, logit=4.0 - loc * 0.4)
    (a, b) = dd.decode(raw, HEAD, score_threshold=0.5)
    assert len(b) == 0
    assert len(a) == sum(math.sqrt(1 / (1 + math.exp(-(4.0 - i * 0.4)))) > 0.5 for i in range(16))
    assert np.all(np.diff(a.scores) <= 0)
    (top,) = dd.decode(raw[:1], HEAD, score_threshold=0.0, max_detections=5)
    assert len(top) == 5 and np.allclose(top.scores, a.scores[:5])


def test_decode_refuses_a_tensor_that_is_not_the_head():
    with pytest.raises(ValueError, match="outputs"):
        dd.decode(np.zeros((1, 19, 8), np.float32), HEAD)
    with pytest.raises(ValueError, match="unknown detection head kind"):
        dd.decode(_raw(), {**HEAD, "kind": "keypoint_heatmap"})


def test_detections_round_trip_through_flat_arrays():
    raw = _raw(3)
    _put(raw, 0, 5, 0.0, 0.0, 2.0, 2.0, cls=0, logit=4.0)
    _put(raw, 2, 7, 0.0, 0.0, 1.0, 2.0, cls=2, logit=4.0)
    _put(raw, 2, 17, 0.0, 0.0, 1.0, 1.0, cls=1, logit=2.0)
    dets = dd.decode(raw, HEAD)
    back = dd.from_arrays(dict(dd.to_arrays(dets)))
    assert [len(d) for d in back] == [1, 0, 2]
    for a, b in zip(dets, back, strict=True):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.classes, b.classes)
    assert [len(d) for d in dd.from_arrays(dd.to_arrays([dd.Detections.empty()] * 2))] == [0, 0]


def test_box_iou_by_hand():
    iou = dd.box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]], rtol=1e-6)
