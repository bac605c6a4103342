"""Hydra config tree: one primary config per CLI subcommand plus the task/policy/algo/robot groups."""
