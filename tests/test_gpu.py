"""The compiled kernel on a CUDA device (skipped without one; see conftest.py)."""
import pytest
import torch

import fused_sampler as fs
from fused_sampler import reference, testing

pytestmark = pytest.mark.gpu
CASES = [dict(), dict(temperature=0.0), dict(top_k=50), dict(top_p=0.95), dict(min_p=0.05),
         dict(temperature=0.7, top_k=50, top_p=0.9),
         dict(top_k=20, top_p=0.8, order="joint")]


@pytest.mark.parametrize("V", [1, 1000, 32000, 128256, 256000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_kernel_matches_reference(V, dtype):
    g = torch.Generator(device="cuda").manual_seed(V)
    logits = (torch.randn(8, V, device="cuda", generator=g) * 3).to(dtype)
    seeds = torch.arange(8, device="cuda")
    for params in CASES:
        v = testing.compare_filtered_probs(logits, backend="triton", **params)
        assert v, (params, v.detail)
        got = fs.sample(logits, seed=seeds, backend="triton", **params)
        want = reference.sample(logits, seed=seeds, **params)
        assert torch.equal(got, want), params


def test_same_tokens_on_gpu_and_in_reference_on_cpu():
    logits = torch.randn(16, 5000) * 2
    seeds = torch.arange(16) * 7
    for params in CASES:
        gpu = fs.sample(logits.cuda(), seed=seeds.cuda(), offset=11, **params).cpu()
        cpu = reference.sample(logits, seed=seeds, offset=11, **params)
        assert torch.equal(gpu, cpu), params


def test_cuda_graph_capture_replays_eager_tokens():
    B, V = 32, 32000
    logits = torch.randn(B, V, device="cuda") * 3
    seeds = torch.arange(B, device="cuda")
    offset = torch.zeros(B, dtype=torch.int64, device="cuda")
    params = dict(temperature=torch.full((B,), 0.7, device="cuda"), top_k=50, top_p=0.9)
    step = lambda: fs.sample(logits, seed=seeds, offset=offset, validate=False,  # noqa
                             **params)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for t in range(3):
        offset.fill_(t)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, step())


def test_validate_false_never_syncs():
    logits = torch.randn(4, 5000, device="cuda")
    seeds = torch.arange(4, device="cuda")
    fs.sample(logits, seed=seeds, validate=False, top_p=0.9)     # compile outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        for params in CASES:
            fs.sample(logits, seed=seeds, validate=False, return_logprobs=True, **params)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_draws_on_gpu_follow_the_reference():
    logits = torch.randn(50, device="cuda") * 2
    for params in CASES[2:]:
        assert testing.draw_p_value(logits, draws=200000, backend="triton", **params) > 1e-3
