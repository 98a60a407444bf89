"""Benchmarks: each prints a figure next to its baseline measured in the same run, as a ratio."""
