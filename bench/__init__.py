"""Reproducible benchmarks; each script prints a summary block and a one-line JSON of its figures."""
