"""Trace-driven what-if simulation: the openb benchmark (docs/openb-benchmark.md) through the shared engine."""
