"""Benchmarks: run with scripts/bench (python -m bench.<name> from the project root)."""
