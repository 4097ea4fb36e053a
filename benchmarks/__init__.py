"""polymodal's benchmark suite: `python -m benchmarks` runs every comparison and writes
docs/benchmarks.md (see benchmarks/__main__.py)."""
