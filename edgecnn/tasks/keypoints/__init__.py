"""Keypoints: single-instance keypoint estimation with heatmap models (see task.py)."""
