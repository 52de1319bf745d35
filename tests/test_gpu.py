"""The compiled kernel on a CUDA device (skipped without one; see conftest.py)."""
import os
import subprocess
import sys

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


@pytest.mark.parametrize("validate", [False, True])
def test_cuda_graph_capture_replays_eager_tokens(validate):
    # validate=True (the default) skips its syncing checks while capturing
    B, V = 32, 32000
    logits = torch.randn(B, V, device="cuda") * 3
    seeds = torch.arange(B, device="cuda")
    offset = torch.zeros(B, dtype=torch.int64, device="cuda")
    params = dict(temperature=torch.full((B,), 0.7, device="cuda"), top_k=50, top_p=0.9)
    step = lambda: fs.sample(logits, seed=seeds, offset=offset, validate=validate,  # noqa
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


def test_a_hundred_launches_give_bitwise_the_same_tokens_and_probs():
    g = torch.Generator(device="cuda").manual_seed(1)
    logits = (torch.randn(64, 128256, device="cuda", generator=g) * 3).to(torch.bfloat16)
    seeds = torch.arange(64, device="cuda")
    for params in CASES:
        tokens = fs.sample(logits, seed=seeds, offset=3, **params)
        probs = fs.filtered_probs(logits, **params)
        for _ in range(100):
            assert torch.equal(fs.sample(logits, seed=seeds, offset=3, **params), tokens)
            assert torch.equal(fs.filtered_probs(logits, **params), probs)


def test_the_interpreter_on_cpu_draws_the_gpu_kernels_tokens(tmp_path):
    # TRITON_INTERPRET is read when triton is imported: the CPU run is another process
    logits = torch.randn(8, 3000) * 3
    torch.save(logits, tmp_path / "logits.pt")
    script = (
        "import sys, torch, fused_sampler as fs\n"
        "x = torch.load(sys.argv[1])\n"
        "cases = eval(sys.argv[2])\n"
        "torch.save([fs.sample(x, seed=torch.arange(8), offset=2, backend='triton', **c)\n"
        "            for c in cases], sys.argv[3])\n")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "logits.pt"), repr(CASES),
                    str(tmp_path / "cpu.pt")], env=env, check=True)
    cpu = torch.load(tmp_path / "cpu.pt")
    for params, want in zip(CASES, cpu):
        got = fs.sample(logits.cuda(), seed=torch.arange(8, device="cuda"), offset=2,
                        backend="triton", **params)
        assert torch.equal(got.cpu(), want), params


def test_b4096_v2pow20plus7_runs_and_allocates_no_b_by_v_buffer():
    B, V = 4096, 2 ** 20 + 7
    g = torch.Generator(device="cuda").manual_seed(2)
    logits = torch.empty(B, V, device="cuda", dtype=torch.bfloat16)
    for i in range(0, B, 512):                      # fill without a B x V fp32 temporary
        logits[i:i + 512] = (torch.randn(512, V, device="cuda", generator=g) * 3)
    seeds = torch.arange(B, device="cuda")
    check_rows = [0, 1, 2047, B - 1]
    for params in CASES:
        fs.sample(logits[:2], seed=seeds[:2], validate=False, **params)     # compile
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        tokens = fs.sample(logits, seed=seeds, validate=False, **params)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        assert extra < B * 64 * 1024, (params, extra)           # per-row scratch only
        assert bool(((tokens >= 0) & (tokens < V)).all())
        want = reference.sample(logits[check_rows], seed=seeds[check_rows], **params)
        assert torch.equal(tokens[check_rows], want), params


def test_distributed_same_tokens_on_gpu_with_nccl_and_no_sync(tmp_path):
    """fs.distributed on CUDA tensors (NCCL, a world of one rank): the reference's tokens
    on each of its three paths, and no host sync with validate=False."""
    import torch.distributed as dist
    from fused_sampler import distributed as fsd
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        logits = torch.randn(16, 5000) * 2
        seeds = torch.arange(16) * 7
        for params in CASES + [dict(top_k=torch.full((16,), 50), top_p=0.9)]:
            kw = dict(vocab_start=0, vocab_size=5000, offset=11, validate=False)
            cuda_params = {k: v.cuda() if isinstance(v, torch.Tensor) else v
                           for k, v in params.items()}
            x, s = logits.cuda(), seeds.cuda()         # copies from the host sync: not here
            gpu = fsd.sample(x, seed=s, **kw, **cuda_params).cpu()
            cpu = reference.sample(logits, seed=seeds, offset=11, **params)
            assert torch.equal(gpu, cpu), params
            torch.cuda.set_sync_debug_mode("error")
            try:
                fsd.sample(x, seed=s, return_logprobs=True, **kw, **cuda_params)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("B", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_shard_summaries_on_gpu_give_the_whole_rows_tokens(B, dtype):
    """The compiled shard kernel (fs.distributed's plain step) on 8 shards of V = 128256,
    cut at multiples of 16032 and at odd places (heads), chunked as a GPU cuts them
    (shard_plan: 16 chunks a shard at B = 1 and 16 on an H100): the summaries,
    concatenated as the all-gather does and combined by the kernel and by PyTorch, give
    the reference's tokens on CPU and its log-probs (B = 16 keeps the CPU reference within the session's test budget)."""
    from fused_sampler import distributed as fsd
    from fused_sampler.kernels import sampler
    V, W = 128256, 8
    g = torch.Generator().manual_seed(B)
    logits = (torch.randn(B, V, generator=g) * 3).to(dtype)
    temperature = torch.linspace(0.0, 1.5, B) if B > 1 else 0.8
    seeds = torch.arange(B) * 3 + 1
    want, want_logp = reference.sample(logits, temperature=temperature, seed=seeds,
                                       offset=2, return_logprobs=True)
    for cuts in ([V // W * r for r in range(W)] + [V],
                 [0, 1, 16035, 40001, 64130, 80000, 99999, 128250, V]):
        parts = []
        for r in range(W):
            local = logits[:, cuts[r]:cuts[r + 1]].cuda()
            a, real, n = fsd._check(local, cuts[r], V, None, temperature if B == 1 else
                                    temperature.cuda(), None, None, None, "top_k_first",
                                    seeds.cuda(), 2, None, "triton", False)
            chunks, block = sampler.shard_plan(B, -(-V // W), local.device)
            parts.append(sampler.shard_parts(a, cuts[r], n, chunks, block=block))
        greedy, inv_t = reference.greedy_and_inv_t(
            temperature if B == 1 else temperature.cuda(), B, local.device)
        for tokens, logp in (sampler.combine_shards(a, torch.cat(parts)),
                             fsd._plain_result(*fsd._split(torch.cat(parts)), greedy, inv_t)):
            assert torch.equal(tokens.cpu(), want), cuts
            torch.testing.assert_close(logp.float().cpu(), want_logp, rtol=1e-5, atol=1e-5)
