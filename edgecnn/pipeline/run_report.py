"""The run report: report.json, report.md and the plot of a finished run, from its stages' results."""

from __future__ import annotations

from edgecnn.analysis.report import build_report, write_report
from edgecnn.config.recipe import recipe_dict
from edgecnn.data.identity import eval_identity
from edgecnn.pipeline.context import Context


def write_run_report(ctx: Context, status: dict[str, str]) -> dict:
    """report.json/.md/.png of a finished run, with the evaluation split's identity recorded; returns the report."""
    data = {**ctx.data.describe(), "eval": eval_identity(ctx.data, ctx.recipe.data.eval_samples)}
    report = build_report(recipe_dict(ctx.recipe), ctx.results, status, data)
    write_report(ctx.run_dir, report)
    return report
