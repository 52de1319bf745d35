"""Benchmarks of fused_sampler against the PyTorch reference, torch.compile and FlashInfer.

``python -m bench`` (see :mod:`bench.run`) times the grid with ``triton.testing.do_bench``;
``pytest bench/ --benchmark-only`` (see :mod:`bench.test_bench`) times the same calls with
pytest-benchmark; ``python -m bench.plot`` draws a results file and tabulates it in
``bench/README.md``.  ``python -m bench --dry-run`` checks all of it on a CPU.
"""
