"""Benchmarks: model prefill/decode/memory, attention kernels, training step, and where the time goes.

Run `python -m swaa.bench --help` for the jobs."""
