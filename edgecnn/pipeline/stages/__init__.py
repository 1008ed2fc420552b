"""The pipeline's stages, in order."""

from edgecnn.pipeline.stages.bench import BenchStage
from edgecnn.pipeline.stages.distill import DistillStage
from edgecnn.pipeline.stages.export import ExportStage
from edgecnn.pipeline.stages.prune import PruneStage
from edgecnn.pipeline.stages.quantize import QuantizeStage
from edgecnn.pipeline.stages.teacher import TeacherStage

STAGES = [TeacherStage(), DistillStage(), PruneStage(), ExportStage(), QuantizeStage(), BenchStage()]

__all__ = ["STAGES", "TeacherStage", "DistillStage", "PruneStage", "ExportStage", "QuantizeStage", "BenchStage"]
