"""Datasets: reading images as users hold them, splits, batches and augmentation."""
