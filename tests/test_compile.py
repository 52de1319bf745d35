"""torch.compile: the sampler is a custom operator with a fake implementation, so that a
compiled decode step keeps it in one graph (fullgraph=True), on CPU and GPU.

On CPU "auto" runs the kernel in Triton's interpreter (conftest sets TRITON_INTERPRET);
"reference" runs the PyTorch reference inside the same operator.
"""
import pytest
import torch

import fused_sampler as fs

B, V = 4, 300
SEEDS = torch.arange(B) * 5 + 1
PARAMS = dict(temperature=0.7, top_k=50, top_p=0.9, min_p=0.01)


def decode_step(hidden, weight, seeds, offset, backend):
    """A decode step's tail: project to logits, sample, read the token's log-prob."""
    logits = hidden @ weight
    tokens, logprobs = fs.sample(logits, seed=seeds, offset=offset, return_logprobs=True,
                                 validate=False, backend=backend, **PARAMS)
    probs = fs.filtered_probs(logits, backend=backend, **PARAMS)
    return tokens, logprobs, probs


def inputs(device="cpu"):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, 16, generator=g)
    weight = torch.randn(16, V, generator=g)
    return hidden.to(device), weight.to(device), SEEDS.to(device)


def assert_same_step(compiled, hidden, weight, seeds, backend):
    for step in range(2):
        offset = torch.full((B,), step, device=seeds.device)
        got = compiled(hidden, weight, seeds, offset, backend)
        want = decode_step(hidden, weight, seeds, offset, backend)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("auto", marks=pytest.mark.interpreter)])
def test_the_operators_pass_opcheck(backend):
    hidden, weight, seeds = inputs()
    a = fs._args.check(hidden @ weight, 0.7, 50, 0.9, None, "joint", seed=seeds, offset=3)
    rows = a.as_rows()
    torch.library.opcheck(torch.ops.fused_sampler.sample.default,
                          (a.logits, *rows, a.order, backend, True))
    torch.library.opcheck(torch.ops.fused_sampler.filtered_probs.default,
                          (a.logits, *rows[:4], a.order, backend))


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("auto", marks=pytest.mark.interpreter)])
def test_fullgraph_compile_of_a_decode_step_gives_the_eager_tokens(backend):
    # inductor, the default, on the reference; aot_eager keeps the interpreted run short
    torch._dynamo.reset()
    compiler = "inductor" if backend == "reference" else "aot_eager"
    compiled = torch.compile(decode_step, fullgraph=True, backend=compiler)
    assert_same_step(compiled, *inputs(), backend)


def test_compiled_validation_raises_at_run_time():
    torch._dynamo.reset()
    temperature = torch.tensor([0.5, -1.0, 1.0, 1.0])

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(logits):
        return fs.sample(logits, temperature=temperature, seed=SEEDS, backend="reference")

    with pytest.raises(ValueError, match=r"temperature: rows \[1\] are negative"):
        step(torch.randn(B, V))
    temperature[1] = 0.0                      # a greedy row: valid, and no recompile needed
    logits = torch.randn(B, V)
    assert step(logits)[1] == logits[1].argmax()


def test_compiled_step_follows_the_batch_size_and_rank():
    torch._dynamo.reset()
    step = torch.compile(lambda x: fs.sample(x, top_k=5, seed=3, backend="reference"),
                         fullgraph=True, backend="aot_eager")
    logits = torch.randn(6, V)
    assert torch.equal(step(logits), fs.sample(logits, top_k=5, seed=3))
    assert torch.equal(step(logits[:2]), fs.sample(logits[:2], top_k=5, seed=3))
    assert step(logits[0]).shape == ()


@pytest.mark.gpu
def test_compiled_decode_step_on_gpu_matches_eager_and_replays_in_a_cuda_graph():
    torch._dynamo.reset()
    hidden, weight, seeds = inputs("cuda")
    assert_same_step(torch.compile(decode_step, fullgraph=True), hidden, weight, seeds, "auto")
    # "reduce-overhead" captures the step in a CUDA graph: nothing in it may sync
    graphed = torch.compile(lambda h, w, s, o: decode_step(h, w, s, o, "auto")[0],
                            fullgraph=True, mode="reduce-overhead")
    for step in range(3):
        offset = torch.full((B,), step, device="cuda")
        want = decode_step(hidden, weight, seeds, offset, "auto")[0]
        assert torch.equal(graphed(hidden, weight, seeds, offset).clone(), want)
