"""Vocabulary-sharded sampling (fused_sampler.distributed) on CPU with gloo: every rank
draws the tokens fused_sampler.sample draws from the whole rows.

One process group per world size (1 to 4, started here with torch.multiprocessing) runs
every case; each rank checks its own answer against the unsharded reference (the same
tokens, log-probs to 1e-5, filtered probabilities to float32 rounding).  Shards are uneven,
one may be empty, and cuts fall inside runs of tied logits.
"""
import importlib.util
import os
import tempfile
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fused_sampler as fs
import test_fuzz
from fused_sampler import distributed as fsd
from fused_sampler._api import resolve_backend

INF = float("inf")


def _cuts(V, world, case):
    """Shard boundaries: uneven, and for some cases with an empty shard."""
    if world == 1:
        return [0, V]
    g = torch.Generator().manual_seed(1000 * world + case)
    inner = sorted(torch.randint(0, V + 1, (world - 1,), generator=g).tolist())
    if case % 3 == 0:                          # an empty shard: two equal cuts
        inner[0] = inner[-1] if world > 2 else 0
        inner.sort()
    return [0, *inner, V]


def _logits(case):
    """[B, V] logits of case ``case``: LLM-like rows, ties, odd values."""
    g = torch.Generator().manual_seed(case)
    B, V = 6, 37 + case % 5
    x = torch.randn(B, V, generator=g) * 2.0
    x[0, 10:20] = 1.5                          # a run of ties that shards cut through
    x[1, ::3] = float("-inf")
    x[2, : V // 2] = float("-inf")             # a shard of -inf for most cuts
    x[3, 5] = 9.0
    x[3, 25] = 9.0                             # tied maxima, apart
    x[4] = x[4].round()                        # many ties
    return x


CASES = [
    dict(temperature=0.7),
    dict(temperature=torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0, 1.0])),     # greedy rows mixed
    dict(top_k=5),
    dict(top_k=torch.tensor([1, 3, 0, 7, 40, 2])),
    dict(top_p=0.8),
    dict(top_p=torch.tensor([0.3, 0.9, 1.0, 0.5, 0.99, 0.05]), temperature=1.5),
    dict(min_p=0.1),
    dict(temperature=0.7, top_k=8, top_p=0.9),
    dict(temperature=0.7, top_k=8, top_p=0.9, order="joint"),
    dict(temperature=1.2, top_k=torch.tensor([3, 0, 5, 2, 9, 1]), top_p=0.7, min_p=0.02),
    dict(temperature=float("inf"), top_k=10),
    # scalar top-k: one all-gather of each shard's candidates and group (row 4: big groups)
    dict(top_k=2, top_p=0.6, temperature=torch.tensor([1.0, 0.0, 0.5, 1.0, 3.0, 1.0])),
    dict(top_k=4, min_p=0.2),
    dict(top_k=1),
    dict(top_k=30, top_p=0.95, temperature=2.0),
]


def _check_case(rank, world, case, params):
    x = _logits(case)
    B, V = x.shape
    cuts = _cuts(V, world, case)
    local = x[:, cuts[rank]:cuts[rank + 1]]
    seeds = torch.arange(B) * 7 + case
    kw = dict(vocab_start=cuts[rank], vocab_size=V, **params)
    tokens, logprobs = fsd.sample(local, seed=seeds, offset=case, return_logprobs=True,
                                  validate=False, **kw)
    ref_params = {k: v for k, v in params.items() if k != "backend"}
    ref_tokens, ref_logprobs = fs.reference.sample(x, seed=seeds, offset=case,
                                                   return_logprobs=True, validate=False,
                                                   **ref_params)
    where = f"case {case} {params} world {world} rank {rank} cuts {cuts}"
    assert torch.equal(tokens, ref_tokens), f"{where}: {tokens} != {ref_tokens}"
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5, msg=where)
    finite = x.clone()
    finite[torch.isinf(finite).all(dim=1)] = 0.0
    probs = fsd.filtered_probs(finite[:, cuts[rank]:cuts[rank + 1]], **kw)
    ref = fs.reference.filtered_probs(finite, **ref_params)[:, cuts[rank]:cuts[rank + 1]]
    torch.testing.assert_close(probs, ref, rtol=1e-6, atol=1e-12, msg=where)


def _odd_rows(rank, world):
    """NaN, +inf and all -inf rows with validate=False; validate=True raises the same
    error on every rank (the check is global); seed=None draws the first rank's seeds."""
    x = torch.randn(4, 30, generator=torch.Generator().manual_seed(5))
    x[0, 3] = float("nan")
    x[1, 17] = INF
    x[1, 29] = INF
    x[2] = float("-inf")
    cuts = _cuts(30, world, 1)
    local = x[:, cuts[rank]:cuts[rank + 1]]
    kw = dict(vocab_start=cuts[rank], vocab_size=30, temperature=0.8, top_p=0.9)
    for params in (dict(temperature=0.8, top_p=0.9), dict(temperature=0.8),
                   dict(temperature=0.8, top_k=3, top_p=0.9)):
        tokens, logprobs = fsd.sample(local, vocab_start=cuts[rank], vocab_size=30, seed=11,
                                      validate=False, return_logprobs=True, **params)
        ref_tokens, ref_logprobs = fs.reference.sample(x, seed=11, validate=False,
                                                       return_logprobs=True, **params)
        assert torch.equal(tokens, ref_tokens), (params, tokens, ref_tokens)
        torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)
    for bad, what in ((0, "contain NaN"), (1, "contain \\+inf"), (2, "no finite logit")):
        for params in (kw, dict(kw, top_p=None), dict(kw, top_k=2)):   # each path
            with pytest.raises(ValueError, match=what):
                fsd.sample(local[bad:bad + 1], **params)
    torch.manual_seed(100 + rank)              # different generators: rank 0's seeds win
    t1 = fsd.sample(local[3:], validate=False, **kw)
    every = [torch.empty_like(t1) for _ in range(world)]
    dist.all_gather(every, t1)
    assert all(torch.equal(t, t1) for t in every)


def _worker(rank, world, init_file, backend, chunks=None):
    if chunks:                     # the kernel's shard race and radix levels in S chunks
        os.environ["FUSED_SAMPLER_CHUNKS"] = str(chunks)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        for case, params in enumerate(CASES):
            _check_case(rank, world, case, dict(params, backend=backend))
        _odd_rows(rank, world)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world, backend, chunks", [(1, "auto", None), (3, "auto", 3),
                                                    (4, "auto", None),
                                                    (2, "reference", None)])
def test_every_rank_draws_the_unsharded_token(world, backend, chunks):
    """backend "auto": the kernel's launches (in Triton's interpreter here): the race,
    the combines, the radix levels (with 3 worlds, each shard cut into 3 chunks);
    "reference": PyTorch."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        if world == 1:
            _worker(0, 1, init_file, backend)
        else:
            mp.start_processes(_worker, args=(world, init_file, backend, chunks),
                               nprocs=world, join=True, start_method="spawn")


def test_bad_shards_are_refused_before_any_collective():
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="does not lie in a vocabulary"):
        fsd.sample(x, vocab_start=8, vocab_size=10)
    with pytest.raises(TypeError, match="vocab_start"):
        fsd.sample(x, vocab_start=1.0, vocab_size=10)


@pytest.mark.parametrize("params", [dict(), dict(top_k=3), dict(top_p=0.9), dict(min_p=0.1),
                                    dict(top_k=3, top_p=0.9),
                                    dict(top_k=3, top_p=0.9, order="joint"),
                                    dict(top_k=True, top_p=0.9)],
                         ids=["plain", "top_k", "top_p", "min_p", "top_k_top_p", "joint",
                              "top_k_rows"])
@pytest.mark.parametrize("seed_given", [True, False], ids=["seed", "generator"])
def test_the_model_counts_the_collectives_sample_makes(monkeypatch, tmp_path, params,
                                                       seed_given):
    """scripts/tp_model.py's collectives, in order, with their payloads, are those of a
    real call (world size 1, every collective recorded)."""
    spec = importlib.util.spec_from_file_location(
        "tp_model", Path(__file__).resolve().parent.parent / "scripts" / "tp_model.py")
    tp_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp_model)
    made = []
    for op in ("all_reduce", "all_gather", "broadcast"):
        real_op = getattr(dist, op)

        def record(t, *args, _op=op, _real=real_op, **kwargs):
            payload = (args[0] if _op == "all_gather" else t).numel() * \
                (args[0] if _op == "all_gather" else t).element_size()
            made.append((_op, payload))
            return _real(t, *args, **kwargs)
        monkeypatch.setattr(fsd.dist, op, record)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        B = 3
        call = dict(params)
        if call.get("top_k") is True:                      # a per-row tensor
            call["top_k"] = torch.tensor([3, 0, 25])
        fsd.sample(torch.randn(B, 20), vocab_start=0, vocab_size=20,
                   seed=1 if seed_given else None, **call)
    finally:
        dist.destroy_process_group()
    # the race sends its shard's chunks' and head's summaries on the kernel's backend
    kernel = resolve_backend("auto", torch.device("cpu")) == "triton"
    summaries = tp_model.plain_summaries(B, 20, 1, programs=1) if kernel else 1
    assert made == tp_model.collectives(B, top_k=params.get("top_k", False),
                                        top_p="top_p" in params,
                                        min_p="min_p" in params,
                                        order=params.get("order", "top_k_first"),
                                        seed_given=seed_given, V=20, summaries=summaries)


# ---- fuzzing: W ranks as threads of one process, with the collectives in shared memory
class _Threads:
    """Stands in for torch.distributed inside fused_sampler.distributed: W ranks as
    threads, each collective a swap through shared slots between two barriers (sums and
    gathers in rank order, as the ring reduces integers and concatenates)."""
    ReduceOp = dist.ReduceOp

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=120)
        self.slots = [None] * world
        self.me = threading.local()

    def get_world_size(self, group=None):
        return self.world

    def get_global_rank(self, group, rank):
        return rank

    def _swap(self, t):
        self.slots[self.me.rank] = t.clone()
        self.barrier.wait()
        parts = list(self.slots)
        self.barrier.wait()
        return parts

    def all_gather(self, out, t, group=None):
        for o, part in zip(out, self._swap(t)):
            o.copy_(part)

    def all_reduce(self, t, op=dist.ReduceOp.SUM, group=None):
        parts = self._swap(t)
        total = parts[0]
        for part in parts[1:]:
            total = torch.maximum(total, part) if op == dist.ReduceOp.MAX else total + part
        t.copy_(total)

    def broadcast(self, t, src, group=None):
        t.copy_(self._swap(t)[src])

    def run(self, fn):
        """fn(rank) on every rank at once; the answers, or the exceptions, by rank."""
        out = [None] * self.world

        def one(rank):
            self.me.rank = rank
            try:
                out[rank] = fn(rank)
            except Exception as exc:  # noqa: BLE001 (compared by the caller)
                out[rank] = exc
        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(call=test_fuzz.calls(vocabs=[1, 2, 3, 7, 16, 17, 64, 129], max_batch=4),
       world=st.integers(1, 4), cut_seed=st.integers(0, 2 ** 20), scalar_k=st.integers(0, 3))
def test_sharded_calls_agree_with_the_reference_on_anything(call, world, cut_seed, scalar_k):
    """The fuzz campaign's calls (odd values, layouts, dtypes, parameters at every edge;
    or, forcing a scalar top-k of 1-3, rows of 0s and 1s, so that shards hold big groups
    tied at their k-th largest), sharded over 1-4 thread ranks at random cuts (empty shards
    included): every rank returns the reference's tokens and, where finite, log-probs;
    validate=True raises on every rank exactly where the contract calls the call invalid.
    (It found NaN in a top-p tensor breaking the radix levels.)"""
    x, params, _ = call
    B, V = x.shape
    g = torch.Generator().manual_seed(cut_seed)
    if scalar_k and params["top_k"] is None:                 # the candidates path more
        params = dict(params, top_k=scalar_k)                # often, with big groups
        x = torch.randint(0, 2, (B, V), generator=g).to(x.dtype)
    cuts = [0, *sorted(torch.randint(0, V + 1, (world - 1,), generator=g).tolist()), V]
    group = _Threads(world)
    seeds = torch.arange(B) * 3 + 1
    want, want_logp = fs.reference.sample(x, seed=seeds, offset=5, validate=False,
                                          return_logprobs=True, **params)

    def shard(rank, validate):     # the reference's noise: threads share no interpreter
        return fsd.sample(x[:, cuts[rank]:cuts[rank + 1]], vocab_start=cuts[rank],
                          vocab_size=V, seed=seeds, offset=5, validate=validate,
                          return_logprobs=True, backend="reference", **params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fsd, "dist", group)
        answers = group.run(lambda r: shard(r, False))
        raised = [isinstance(r, ValueError) for r in group.run(lambda r: shard(r, True))]
    for rank, got in enumerate(answers):
        assert not isinstance(got, Exception), got
        tokens, logp = got
        assert torch.equal(tokens, want), (rank, cuts, tokens, want)
        finite = torch.isfinite(want_logp)
        torch.testing.assert_close(logp[finite], want_logp[finite], rtol=1e-5, atol=1e-5)
    invalid = test_fuzz._invalid(x, params)
    assert raised == [invalid] * world, (raised, invalid)


def _whole_row_bounds(x, params):
    """_shard_kernel's ``kept`` of the whole rows ``x`` under the filters ``params`` (the
    lowest kept key, the rows' max, ln(min_p) or None): fs.distributed's steps 1-3 on one
    rank, with the PyTorch levels."""
    B, V = x.shape
    a, real, n = fsd._check(x, 0, V, None, params.get("temperature", 1.0),
                            params.get("top_k"), params.get("top_p"), params.get("min_p"),
                            params.get("order", "top_k_first"), 0, 0, None, "reference",
                            False)
    group = _Threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fsd, "dist", group)
        (got,) = group.run(lambda r: fsd._bounds(a, real, n, V, None, False))
    assert not isinstance(got, Exception), got
    _, _, m_raw, kept_lo, _ = got
    return kept_lo, m_raw[:, 0], fsd._min_p_log(a) if a.min_p is not None else None


ROW_K = torch.tensor([3, 2, 5, 1, 4, 10, 1, 7])
SHARD_CASES = [  # (noise_test, V, world, chunks, log-probs, dtype, filters)
    (0, 97, 3, 3, True, torch.float32, {}),
    (0, 100, 4, 7, False, torch.bfloat16, {}),     # more chunks than tiles: some empty
    (1, 97, 2, 2, False, torch.float32, {}),
    (2, 61, 3, 2, True, torch.float32, {}),
    (0, 64, 1, 2, False, torch.float32, {}),       # one rank, no head
    (0, 97, 3, 3, True, torch.float32, dict(top_k=ROW_K, top_p=0.8, min_p=0.05)),
    (1, 100, 4, 7, False, torch.bfloat16, dict(min_p=0.1)),
    (2, 61, 3, 2, True, torch.float32, dict(top_k=ROW_K, top_p=0.7, order="joint")),
]


@pytest.mark.parametrize("noise_test, V, world, chunks, logprobs, dtype, filters",
                         SHARD_CASES,
                         ids=["proved-logprobs", "proved-bf16", "loosest_bounds",
                              "spoiled_bounds", "proved-one-rank", "filtered-proved",
                              "min_p-loosest-bf16", "joint-spoiled"])
def test_shard_chunk_summaries_combine_to_the_unsharded_token(noise_test, V, world, chunks,
                                                              logprobs, dtype, filters):
    """The kernel's shard summaries (_shard_kernel, in the interpreter) of every rank's
    shard, concatenated in rank order as the all-gather does, give the reference's
    tokens and log-probs, combined by the kernel (_combine_shards_kernel, 4 summaries
    at a time) and by PyTorch (the reference backend's _plain_result): shards cut
    anywhere (starts off a multiple of 4, so with a head; empty shards), chunks of
    16-token tiles, rows with ties (at 1e20 too, where keys need an anchor near the max;
    at 0.0 and -0.0), +inf, NaN, no finite logit, greedy and T = inf; the race's bounds
    exact, loosened by 0.99 of the margin (proofs must still hold) or spoiled (chunks
    take the exact way); with filters, over the kept tokens of the whole rows' bounds
    (chunks with none among them)."""
    from fused_sampler.kernels import sampler
    g = torch.Generator().manual_seed(V)
    B = 8
    x = torch.randn(B, V, generator=g) * 3.0
    x[0, 10:40] = 2.5                              # a tied top run, cut by shards
    x[0, :10] = -1.0
    x[1, V // 2] = INF
    x[1, V - 1] = INF
    x[2] = float("-inf")
    x[3, 3] = float("nan")
    x[4, : V // 2] = float("-inf")
    x[5] = x[5].round()
    x[5, ::2] = torch.where(x[5, ::2] == 0, -0.0, x[5, ::2])   # -0.0 ties +0.0
    x[6:, ::2] = 1e20                              # ties far from 0: the anchor matters
    x = x.to(dtype)
    temperature = torch.tensor([1.0, 0.7, 1.3, 0.0, INF, 0.5, 2.0, 0.3])
    seeds = torch.arange(B) * 5 + V
    cuts = [0, *sorted(torch.randint(0, V + 1, (world - 1,), generator=g).tolist()), V]
    if world > 2:
        cuts[1] = cuts[2]                          # an empty shard
    filters = dict(filters, temperature=temperature)
    kept = _whole_row_bounds(x, filters) if len(filters) > 1 else None
    parts = []
    for r in range(world):
        a, real, n = fsd._check(x[:, cuts[r]:cuts[r + 1]], cuts[r], V, None, temperature,
                                None, None, None, "top_k_first", seeds, 3, None, "triton",
                                False)
        parts.append(sampler.shard_parts(a, cuts[r], n, chunks, block=16,
                                         return_logprobs=logprobs, noise_test=noise_test,
                                         kept=kept))
    want, want_logp = fs.reference.sample(x, seed=seeds, offset=3, validate=False,
                                          return_logprobs=True, **filters)
    greedy, inv_t = fs.reference.greedy_and_inv_t(temperature, B, x.device)
    for tokens, logp in (sampler.combine_shards(a, torch.cat(parts), block_p=4),  # kernel
                         fsd._plain_result(*fsd._split(torch.cat(parts)), greedy, inv_t)):
        assert torch.equal(tokens, want), (cuts, tokens, want)
        if logprobs:
            torch.testing.assert_close(logp.float(), want_logp, rtol=1e-5, atol=1e-5)


SHARDINGS = dict(world=st.integers(1, 4), cut_seed=st.integers(0, 2 ** 20),
                 chunks=st.integers(1, 4), block=st.sampled_from([16, 32]),
                 logprobs=st.booleans())


def check_sharded_call(call, world, cut_seed, chunks, block, logprobs):
    """A fuzzed call (tests.test_fuzz.calls) sharded over ``world`` ranks at random cuts
    through the kernel's shard summaries (in the interpreter, one rank after another,
    each shard in ``chunks`` chunks of ``block``-token tiles; a filtered call's race over
    the kept tokens of the whole rows' bounds), combined by the kernel and by PyTorch:
    the reference's tokens, and where finite its log-probs.  Also the long campaign's
    (``python -m tests.fuzz --sharded``)."""
    from fused_sampler.kernels import sampler
    x, params, _ = call
    B, V = x.shape
    t = params["temperature"]
    g = torch.Generator().manual_seed(cut_seed)
    cuts = [0, *sorted(torch.randint(0, V + 1, (world - 1,), generator=g).tolist()), V]
    seeds = torch.arange(B) * 3 + 1
    filtered = any(params[f] is not None for f in ("top_k", "top_p", "min_p"))
    kept = _whole_row_bounds(x, params) if filtered else None
    parts = []
    for r in range(world):
        a, real, n = fsd._check(x[:, cuts[r]:cuts[r + 1]], cuts[r], V, None, t, None, None,
                                None, "top_k_first", seeds, 5, None, "triton", False)
        parts.append(sampler.shard_parts(a, cuts[r], n, chunks, block=block,
                                         return_logprobs=logprobs, kept=kept))
    want, want_logp = fs.reference.sample(x, seed=seeds, offset=5, validate=False,
                                          return_logprobs=True, **params)
    greedy, inv_t = fs.reference.greedy_and_inv_t(a.temperature, B, x.device)
    finite = torch.isfinite(want_logp)
    for tokens, logp in (sampler.combine_shards(a, torch.cat(parts)),      # the kernel's
                         fsd._plain_result(*fsd._split(torch.cat(parts)), greedy, inv_t)):
        assert torch.equal(tokens, want), (cuts, tokens, want)
        if logprobs:
            torch.testing.assert_close(logp.float()[finite], want_logp[finite], rtol=1e-5,
                                       atol=1e-5)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(call=test_fuzz.calls(vocabs=[1, 2, 3, 7, 16, 17, 64, 129], max_batch=4), **SHARDINGS)
def test_shard_kernel_agrees_with_the_reference_on_fuzzed_calls(call, world, cut_seed, chunks,
                                                               block, logprobs):
    """The fuzz campaign's calls (odd values, layouts, dtypes, every temperature edge,
    per-row tensors with out-of-range values) through check_sharded_call."""
    check_sharded_call(call, world, cut_seed, chunks, block, logprobs)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(call=test_fuzz.calls(vocabs=[2, 3, 7, 16, 17, 64, 129], max_batch=4),
       world=st.integers(1, 4), cut_seed=st.integers(0, 2 ** 20), k=st.integers(1, 24),
       ties=st.booleans(), block=st.sampled_from([16, 32]))
def test_candidates_kernel_summaries_are_the_references(call, world, cut_seed, k, ties,
                                                        block):
    """A scalar top-k's shard summaries on the kernel's backends (torch.topk and
    _candidates_kernel, in the interpreter, 16- or 32-token tiles) are the reference
    backend's (_candidate_columns): the same candidates, groups and odd-row columns (the
    noise to its last bits), for the fuzz campaign's calls given a scalar top-k (rows of
    0s and 1s for half of them, so that groups straddle shards and tiles), cut at random
    over 1-4 ranks; and both, combined by the kernel (_combine_candidates_kernel) and by
    PyTorch (_candidates_result), give the reference's tokens and log-probs."""
    x, params, _ = call
    B, V = x.shape
    k = min(k, V - 1)
    g = torch.Generator().manual_seed(cut_seed)
    if ties:
        x = torch.randint(0, 2, (B, V), generator=g).to(x.dtype)
    params = dict(params, top_k=k, order="top_k_first")
    cuts = [0, *sorted(torch.randint(0, V + 1, (world - 1,), generator=g).tolist()), V]
    seeds = torch.arange(B) * 3 + 1
    kernel, reference = [], []
    for r in range(world):
        a, real, n = fsd._check(x[:, cuts[r]:cuts[r + 1]], cuts[r], V, None,
                                params["temperature"], k, params["top_p"], params["min_p"],
                                "top_k_first", seeds, 5, None, "triton", False)
        got = fsd._candidate_summary(a, real, n, cuts[r], False, block=block)
        want = fsd._candidate_columns(a, real, n, cuts[r], k)
        kernel.append(got)
        reference.append(want)
        S = fsd._SHARED
        none_finite = want[:, 0] == -INF               # where the kernel draws all's noise
        for cols in (got, want):
            cols[:, 1] = 0.0                            # the NaN flag: the caller's
            cols[:, 5] = torch.where(none_finite, cols[:, 5], -INF)
            cols[:, 6] = torch.where(none_finite, cols[:, 6], 2.0 ** 62)
        # the candidates in index order (torch.topk may order equal logits either way)
        for cols in (got, want):
            order = cols[:, S + k:S + 2 * k].argsort(dim=1, stable=True)
            for j in range(3):
                block_j = cols[:, S + j * k:S + (j + 1) * k]
                block_j.copy_(block_j.gather(1, order))
        noise = [3, 5, *range(S + 2 * k, S + 3 * k), S + 3 * k + 2]
        exact = [c for c in range(got.shape[1]) if c not in noise]
        where = (cuts, r, k)
        assert torch.equal(got[:, exact].view(torch.int64),      # bits: -0.0 is not 0.0
                           want[:, exact].view(torch.int64)), where
        torch.testing.assert_close(got[:, noise], want[:, noise], rtol=1e-6, atol=1e-6,
                                   msg=str(where))
    ref_tokens, ref_logp = fs.reference.sample(x, seed=seeds, offset=5, validate=False,
                                               return_logprobs=True, **params)
    greedy, inv_t = fs.reference.greedy_and_inv_t(a.temperature, B, x.device)
    finite = torch.isfinite(ref_logp)
    from fused_sampler.kernels import sampler
    for parts in (kernel, reference):
        for tokens, logp in (sampler.combine_candidates(a, torch.stack(parts), k),
                             fsd._candidates_result(a, *fsd._split(torch.stack(parts)),
                                                    greedy, inv_t)):
            assert torch.equal(tokens, ref_tokens), (cuts, tokens, ref_tokens)
            torch.testing.assert_close(logp[finite], ref_logp[finite], rtol=1e-5,
                                       atol=1e-5)


def _combines_agree_with_the_reference(x, cuts, k, top_p, seeds):
    """Each backend's candidate summaries of the shards [cuts[r], cuts[r + 1]), combined
    by the kernel and by PyTorch, give fs.reference.sample's tokens and log-probs."""
    from fused_sampler.kernels import sampler
    B, V = x.shape
    want, want_logp = fs.reference.sample(x, top_k=k, top_p=top_p, seed=seeds,
                                          return_logprobs=True)
    for backend in ("triton", "reference"):
        parts = []
        for r in range(len(cuts) - 1):
            a, real, n = fsd._check(x[:, cuts[r]:cuts[r + 1]], cuts[r], V, None, 1.0, k,
                                    top_p, None, "top_k_first", seeds, 0, None, backend,
                                    False)
            parts.append(fsd._candidate_summary(a, real, n, cuts[r], False))
        greedy, inv_t = fs.reference.greedy_and_inv_t(1.0, B, x.device)
        for tokens, logp in (sampler.combine_candidates(a, torch.stack(parts), k),
                             fsd._candidates_result(a, *fsd._split(torch.stack(parts)),
                                                    greedy, inv_t)):
            assert torch.equal(tokens, want), (backend, tokens, want)
            torch.testing.assert_close(logp, want_logp, rtol=1e-5, atol=1e-5)
    return want


@pytest.mark.parametrize("k", [3, 4], ids=["group-at-the-cut", "candidate-at-the-cut"])
def test_candidates_top_p_cuts_between_adjacent_floats(k):
    """Top-p's cut falls between 1.0 and the float just below it (the mass strictly above
    1.0 is below p K, above the next one it is not): the reference never draws the lower,
    and neither does either combine, whether that token is its shard's group (k = 3) or
    a candidate (k = 4)."""
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    row = torch.tensor([2.0, 1.0, below_one, -1.0, -2.0, -1.5, -2.5, -3.0, -4.0, -5.0])
    want = _combines_agree_with_the_reference(row.expand(6, -1).contiguous(), [0, 5, 10], k,
                                              0.7, torch.arange(6) + 7)
    assert set(want.tolist()) == {0, 1}


def test_candidates_keep_a_zero_and_a_negative_zero_alike():
    """0.0 and -0.0 are one logit: top-p keeps both or neither (a -0.0 sent unsanitised
    took a lower key than 0.0 in the kernel's combine, which then cut it)."""
    x = torch.tensor([0.0, -5.0, -0.0, -5.0]).expand(16, -1).contiguous()
    want = _combines_agree_with_the_reference(x, [0, 2, 4], 2, 0.3, torch.arange(16))
    assert set(want.tolist()) == {0, 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_radix_level_kernel_sums_what_the_pytorch_level_sums(dtype):
    """One radix level on the kernel's backends (_radix_level_kernel) against the PyTorch
    level (fsd._level): the same digit counts, exactly, and the same fixed-point masses
    to the last bits of exp2 (numpy's in the interpreter, MUFU's on a GPU), at every
    shift, under prefixes taken from the row's own keys, with top-k's floor on the
    masses, over a strided shard with 0.0 and -0.0, NaN, a +inf row, a row with no finite
    logit and -inf tokens; and an empty shard; each row in one program, and cut into 3
    chunks of 64-token tiles (the last shorter) or 20 (some empty), whose counts and
    masses add by atomics."""
    from fused_sampler.kernels import sampler
    g = torch.Generator().manual_seed(7)
    B, n = 6, 700
    wide = (torch.randn(B, n + 37, generator=g) * 3).to(dtype)
    x = wide[:, 5:5 + n]                                   # rows n + 37 apart
    x[0, :50], x[0, 50:60] = 0.0, -0.0
    x[1, 5], x[2, 7], x[2, 9], x[3], x[4, ::3] = float("nan"), INF, INF, -INF, -INF
    inv_t = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.3, 0.7])
    for width in (n, 0):
        a, real, n_real = fsd._check(x if width else x[:, :0], 0, n, None, 1.0, None, None,
                                     None, "top_k_first", 0, 0, None, "reference", False)
        shard = x if width else a.logits                   # (the kernel reads the strides)
        xc = torch.where(real, fs.reference.clean(a.logits), -INF)
        m_raw = xc.amax(dim=1, keepdim=True)
        if not width:
            m_raw = torch.tensor([[1.0], [2.0], [INF], [-INF], [0.5], [3.0]])
        x_s, m = fs.reference.resolve_odd_rows(xc, m_raw)
        keys = fsd._keys(x_s)
        kept_lo = torch.where(torch.arange(B) % 2 == 0, keys[:, 100 % keys.shape[1]], 0)
        mass = torch.where(keys >= kept_lo[:, None], fsd._terms(x_s, m, inv_t), 0)
        for shift in (24, 16, 8, 0):
            up = shift + fsd.RADIX_BITS
            zeros = torch.zeros(B, dtype=torch.int64)
            state = torch.stack([keys[:, 3 % keys.shape[1]] >> up, zeros,
                                 keys[:, 11 % keys.shape[1]] >> up, zeros], dim=1)
            want = fsd._level(keys, real, mass, shift, state, True, True)

            for chunks, block in ((1, None), (3, 64), (20, 64)):
                def level(has_k, has_p):
                    return sampler.radix_level(shard, n_real, m_raw[:, 0], inv_t, shift,
                                               fsd.RADIX_BITS, state, has_k=has_k,
                                               has_p=has_p, kept_lo=kept_lo, chunks=chunks,
                                               block=block)
                got = level(True, True)
                where = f"{dtype} width {width} shift {shift} chunks {chunks}"
                assert torch.equal(got[0], want[0]), where
                assert (want[1] > 0).any() or not width, where      # masses were summed
                torch.testing.assert_close(got[1].double(), want[1].double(), rtol=1e-6,
                                           atol=n, msg=where)
                assert torch.equal(level(True, False)[0], got[0]), where
                assert torch.equal(level(False, True)[0], got[1]), where


@pytest.mark.parametrize("has_k, has_p", [(True, False), (False, True), (True, True)],
                         ids=["top-k", "top-p", "joint"])
def test_radix_level_kernel_chooses_the_pytorch_bins(has_k, has_p):
    """A level's choice of a bin on the kernel (_radix_choose, in the next level's launch)
    against the PyTorch twin (fsd._choose), from the same all-reduced histograms: the same
    prefixes, tokens still needed, mass above and p x K, bit for bit; histograms with
    empty bins, the count reached inside a bin and at its edge, pK on a bin's edge, K from
    the first level; in place (one program a row), and made by each of 3 chunks of a row
    streaming its level, chunk 0 writing it to a state of its own."""
    from fused_sampler.kernels import sampler
    g = torch.Generator().manual_seed(11)
    B, bins = 7, 1 << fsd.RADIX_BITS
    for first in (True, False):
        hist = torch.randint(0, 40, (int(has_k) + int(has_p), B, bins), generator=g)
        hist *= torch.rand(hist.shape, generator=g) < 0.3               # empty bins
        hist[-1] = hist[-1] * torch.randint(1, 2 ** 36, (B, bins), generator=g) \
            if has_p else hist[-1]
        total_k = hist[0].sum(dim=1)
        need = torch.clamp_min((total_k.double() * torch.rand(B, generator=g)).long(), 1)
        need[0] = hist[0, 0, -1] + 1 if hist[0, 0, -1] else 1           # the edge of a bin
        above = torch.randint(0, 2 ** 30, (B,), generator=g)
        desc = hist[-1].flip(1)
        cum = torch.cumsum(desc, dim=1)
        pk = (above + cum[:, -1]).double() * torch.rand(B, generator=g, dtype=torch.float64)
        pk = torch.maximum(pk, above.double() + 1)
        pk[1] = float(above[1] + cum[1, 5])                             # on a bin's edge
        p = torch.rand(B, generator=g, dtype=torch.float64).clamp_min(1e-3)
        zeros = torch.zeros(B, dtype=torch.int64)
        state = torch.stack([torch.randint(0, 2 ** 16, (B,), generator=g), need,
                             torch.randint(0, 2 ** 16, (B,), generator=g),
                             above if not first else zeros], dim=1)
        want_state, want_pk = state.clone(), pk.clone()
        fsd._choose(hist, want_state, want_pk, p, first, has_k, has_p)
        got_state, got_pk = state.clone(), pk.clone()
        logits = torch.zeros(B, 1)
        sampler.radix_level(logits, 1, torch.zeros(B), torch.ones(B), 0, fsd.RADIX_BITS,
                            got_state, has_k=has_k, has_p=has_p, prev=hist, pk=got_pk, p=p,
                            first=first, stream=False)
        assert torch.equal(got_state, want_state), (first, got_state, want_state)
        assert torch.equal(got_pk, want_pk), first
        got_pk, got_state, before = pk.clone(), torch.zeros_like(state), state.clone()
        sampler.radix_level(torch.zeros(B, 48), 48, torch.zeros(B), torch.ones(B), 0,
                            fsd.RADIX_BITS, state, has_k=has_k, has_p=has_p, prev=hist,
                            pk=got_pk, p=p, first=first, state_out=got_state, chunks=3,
                            block=16)
        assert torch.equal(state, before), first
        written = [0, 1] * has_k + [2, 3] * has_p
        assert torch.equal(got_state[:, written], want_state[:, written]), (first, got_state)
        assert torch.equal(got_pk, want_pk), first
