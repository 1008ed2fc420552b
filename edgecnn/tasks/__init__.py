"""Tasks: what differs between classification, detection and keypoints (data, losses, decoding, metrics, parity)."""
