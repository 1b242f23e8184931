"""Hydra config tree, importable so tests and installed copies can compose it."""
