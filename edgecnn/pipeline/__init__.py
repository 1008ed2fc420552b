"""The pipeline: run directories, stages, resume, preflight checks and sweeps."""
