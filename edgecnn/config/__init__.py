"""Recipes: the typed, validated configuration of a run."""
