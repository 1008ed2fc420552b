"""Compression steps: training and distillation, pruning, export, int8 quantization."""
