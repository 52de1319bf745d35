"""pytest-benchmark timings of the same calls as ``python -m bench``.

Run from the repository root::

    pytest bench/ --benchmark-only                      # quick grid
    FS_BENCH_GRID=full pytest bench/ --benchmark-only   # the full grid (long)
    FS_BENCH_IMPLS=fused_sampler,flashinfer_probs pytest bench/ --benchmark-only

Each timed call ends in ``torch.cuda.synchronize()``, so a round measures the work and not
only the launch; inputs rotate among preallocated copies (pytest-benchmark does not flush
the L2 cache between rounds; the rotation keeps the logits out of it).  The module skips
without CUDA.
"""
import itertools
import os

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("the benchmarks need a CUDA device", allow_module_level=True)

from bench import workloads as wl  # noqa: E402  (after the skip: nothing to import on CPU)

GRID = wl.GRIDS[os.environ.get("FS_BENCH_GRID", "quick")]
IMPLS = [i for i in os.environ.get("FS_BENCH_IMPLS", ",".join(wl.IMPLS)).split(",") if i]
ROUNDS = int(os.environ.get("FS_BENCH_ROUNDS", "30"))
POINTS = [pytest.param(impl, dtype, V, B, case, id=f"{impl}-{case}-{dtype}-V{V}-B{B}")
          for impl in IMPLS for dtype, V, B, case in GRID.points() if wl.applies(impl, case)]


@pytest.mark.gpu
@pytest.mark.parametrize("impl, dtype, V, B, case", POINTS)
def test_sample(benchmark, impl, dtype, V, B, case):
    """Time one implementation at one grid point."""
    try:
        call = wl.build(impl, case, B, "cuda")
    except wl.Unavailable as exc:
        pytest.skip(str(exc))
    inputs = wl.make_inputs(B, V, dtype, "cuda", wl.cache_bytes("cuda"))
    call(inputs[0])                        # compile / JIT / first launch: not timed
    torch.cuda.synchronize()
    rotation = itertools.cycle(inputs)

    def timed():
        tokens = call(next(rotation))
        torch.cuda.synchronize()
        return tokens

    benchmark.group = f"{case}-{dtype}-V{V}-B{B}"
    benchmark.extra_info.update(impl=impl, case=case, dtype=dtype, V=V, B=B)
    tokens = benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=3, iterations=1)
    assert tokens.shape == (B,)
