"""Benchmarks: end-to-end on the real broker (``make bench``) and of single components."""
