"""The pipeline's stages, in order; `default_stages()` makes a fresh set for each run."""

from __future__ import annotations

from edgecnn.pipeline.context import Stage
from edgecnn.pipeline.stages.bench import BenchStage
from edgecnn.pipeline.stages.distill import DistillStage
from edgecnn.pipeline.stages.export import ExportStage
from edgecnn.pipeline.stages.prune import PruneStage
from edgecnn.pipeline.stages.quantize import QuantizeStage
from edgecnn.pipeline.stages.teacher import TeacherStage

STAGE_CLASSES: tuple[type[Stage], ...] = (
    TeacherStage, DistillStage, PruneStage, ExportStage, QuantizeStage, BenchStage,
)


def default_stages() -> list[Stage]:
    """Every stage of `compress`, in order, as new instances (no state is shared between runs)."""
    return [cls() for cls in STAGE_CLASSES]
