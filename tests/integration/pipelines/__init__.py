"""Pipelines the framework tests run (importable by the worker processes they start)."""
