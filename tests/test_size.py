"""Sizes engines reach: a vocabulary of 2^20 + 7 tokens, rows that start past 2^32
elements, and the fused path's memory: a scratch per program (not per row), nothing of
size B x V.

B = 4096 runs on a GPU (tests/test_gpu.py) and once through the interpreter by
``scripts/size_check.py`` (docs/reliability.md): interpreted, a program costs ~0.1 s.
"""
import pytest
import torch

import fused_sampler as fs
from bench.workloads import make_logits
from fused_sampler import _args, reference, testing
from fused_sampler.kernels import sampler

pytestmark = pytest.mark.interpreter

V_HUGE = 2 ** 20 + 7
SCRATCH_PER_PROGRAM = sampler.program_memory(V_HUGE)    # about 70 KB


def test_a_vocabulary_of_two_to_the_20_plus_7_allocates_only_one_scratch(monkeypatch):
    monkeypatch.delenv(sampler.CHUNKS_ENV, raising=False)     # one program per row
    x = make_logits(1, V_HUGE, "bfloat16", seed=0)
    seeds = torch.tensor([11])
    params = dict(temperature=0.8, top_p=0.95)      # the refine path: the longest
    tokens, sizes = testing.allocations(
        lambda: fs.sample(x, seed=seeds, validate=False, **params), x, seeds)
    assert torch.equal(tokens, reference.sample(x, seed=seeds, **params))
    assert max(n for _, n in sizes) <= SCRATCH_PER_PROGRAM // 2
    assert sum(n for _, n in sizes) <= SCRATCH_PER_PROGRAM + 1024      # vs 4 MiB for B x V fp32
    assert SCRATCH_PER_PROGRAM <= 72 * 1024


def test_rows_that_start_past_two_to_the_32_elements():
    # 8 GiB of address space, five rows of it touched.  The row stride fits in int32;
    # row 4 starts at element 2^32 + 64, where an int32 row offset would wrap onto row 0
    V = 1000
    stride = 2 ** 30 + 16
    buf = torch.empty(4 * stride + V, dtype=torch.bfloat16)
    x = buf.as_strided((5, V), (stride, 1))
    x.copy_(make_logits(5, V, seed=1))
    dense = x.clone()
    seeds = torch.arange(5) + 5
    for params in (dict(), dict(temperature=0.7, top_k=50, top_p=0.9)):
        assert torch.equal(fs.sample(x, seed=seeds, **params),
                           reference.sample(dense, seed=seeds, **params))
    torch.testing.assert_close(fs.filtered_probs(x, top_p=0.9),
                               reference.filtered_probs(dense, top_p=0.9), rtol=1e-5, atol=1e-7)


def test_memory_does_not_grow_with_the_batch_past_the_grid(monkeypatch):
    # the interpreter's grid is 32 programs: 64 rows reuse the 32 scratches of 32 rows
    monkeypatch.delenv(sampler.CHUNKS_ENV, raising=False)     # one program per row
    def allocated(B):
        x = make_logits(B, 40, seed=B)
        seeds = torch.arange(B)
        tokens, sizes = testing.allocations(
            lambda: fs.sample(x, seed=seeds, top_k=5, top_p=0.9, validate=False), x, seeds)
        assert torch.equal(tokens, reference.sample(x, seed=seeds, top_k=5, top_p=0.9))
        return sorted(n for _, n in sizes)

    small, large = allocated(32), allocated(64)
    outputs = lambda B: [B * 8]                         # noqa: E731 (the tokens)
    for n in outputs(32):
        small.remove(n)
    for n in outputs(64):
        large.remove(n)
    assert small == large and sum(large) <= 32 * sampler.program_memory(40) + 64


@pytest.mark.parametrize("chunks", [2, 7])
def test_split_rows_hold_a_scratch_per_row_and_a_tile_of_words_per_program(chunks):
    # rows split over programs (small batches: B <= SMs) keep one program's scratch per
    # row, plus per program a tile of collect words and four int64 summaries
    B, V = 3, 3000
    x = make_logits(B, V, seed=2)
    seeds = torch.arange(B)
    a = _args.check(x, 0.8, 20, 0.9, None, "top_k_first", seed=seeds, validate=False)
    (tokens, *_), sizes = testing.allocations(
        lambda: sampler.launch(a, False, return_logprobs=False, chunks=chunks), x, seeds)
    assert torch.equal(tokens, reference.draw(a)[0])
    block = sampler._sizes_for(V)[0]
    per_program = block * 4 + 4 * 8
    assert sum(n for _, n in sizes) <= B * (sampler.program_memory(V) + 64) \
        + B * chunks * per_program + B * 8 + 64
