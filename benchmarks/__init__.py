"""Benchmarks of capnet against bare open_clip: run `make bench` (see benchmarks/run_all.py)."""
