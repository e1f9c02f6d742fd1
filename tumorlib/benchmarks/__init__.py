"""Benchmarks that print numbers: loading and patch sampling, the training engine's throughput, GPU figures."""
