"""Benchmarks: sweeps of runs, model selection, analysis, report tables and reproduction."""
