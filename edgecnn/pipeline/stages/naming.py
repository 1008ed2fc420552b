"""Report names of the models each stage produces."""

from __future__ import annotations

from edgecnn.pipeline.context import Context


def model_name(ctx: Context, stage: str) -> str:
    """`teacher`, `student`, or `<student|teacher>-pruned` for the prune stage's model."""
    base = "student" if "distill" in ctx.results else "teacher"
    return {"teacher": "teacher", "distill": "student", "prune": f"{base}-pruned"}[stage]
