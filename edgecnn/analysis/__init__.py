"""Analysis: run reports, comparisons and Pareto fronts."""
