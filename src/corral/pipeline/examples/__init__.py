"""Example pipelines, runnable with ``corral pipeline run``."""
