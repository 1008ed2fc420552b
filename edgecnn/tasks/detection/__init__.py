"""Object detection: data specs, the numpy decoder shared with the device agent, losses, COCO metrics, the task."""
