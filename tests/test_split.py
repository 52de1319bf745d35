"""Rows split over programs (small batches): the same tokens for every chunk count.

``launch(..., chunks=S)`` cuts each row into S chunks of whole tiles (_split_kernel): the
first launch reads each chunk once and the last chunk of a row to arrive combines them
(greedy and plain rows end there, filtered rows are searched); a call with filters
launches again for the collect pass (and before it, top-p alone's bin masses), split the
same way.  The token and log-prob must not depend on S: the reference's for every seed, with a last chunk shorter than the others, chunks past
the row's end, and every row kind mixed in one launch.  Small tiles make several tiles
per chunk, and small histograms and scratches make the filtered rows refine and gather
after their split first pass.
"""
import pytest
import torch

from fused_sampler import _args, reference
from fused_sampler.kernels import sampler

from test_kernel import CASES, RACE_PATHS, llm_like

pytestmark = pytest.mark.interpreter

SMALL = dict(block=64, bin_bits=5, cap=32)
CHUNKS = [1, 2, 3, 7, 64]


def call(logits, seed=None, **params):
    return _args.check(logits, params.get("temperature", 1.0), params.get("top_k"),
                       params.get("top_p"), params.get("min_p"),
                       params.get("order", "top_k_first"),
                       seed=torch.arange(logits.shape[0]) + 7 if seed is None else seed,
                       offset=3, validate=False)


def assert_split_matches(a, chunks, cfg=SMALL, **launch):
    """Tokens and log-probs of the split launch are the reference's; its reads and
    fallbacks are those of one program per row.  Returns the split launch's reads."""
    tokens, logprobs, _, passes, fallbacks = sampler.launch(a, False, stats=True,
                                                            chunks=chunks, **cfg, **launch)
    ref_tokens, ref_logprobs = reference.draw(a)
    assert torch.equal(tokens, ref_tokens), (tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)
    whole = sampler.launch(a, False, stats=True, chunks=0, **cfg, **launch)
    assert torch.equal(tokens, whole[0])
    assert passes.tolist() == whole[3].tolist()
    assert fallbacks.tolist() == whole[4].tolist()
    return passes


# every chunk count on the four row paths (greedy, the plain race, filtered rows with a
# count refine, top-p with bin masses); the other filter combinations at S = 3
SPLIT_CASES = [(case, s) for case in ("plain", "greedy", "top_k_top_p", "top_p")
               for s in CHUNKS] + [(case, 3) for case in CASES
                                   if case not in ("plain", "greedy", "top_k_top_p", "top_p")]


@pytest.mark.parametrize("case, chunks", SPLIT_CASES, ids=[f"{c}-S{s}" for c, s in SPLIT_CASES])
def test_the_token_does_not_depend_on_the_chunks(case, chunks):
    # V = 600 in tiles of 64: 10 tiles; S = 3 makes chunks of 256, 256 and 88 tokens (the
    # tail tile masked), S = 7 four of 128, one of 88 and two empty, S = 64 54 empty
    a = call(llm_like(2, 600, seed=len(case)), **CASES[case])
    assert_split_matches(a, chunks)


@pytest.mark.parametrize("chunks", [2, 7])
def test_every_row_kind_in_one_launch(chunks):
    # per-row parameters: greedy, plain, top-k, top-p and min-p rows in the same grid
    x = llm_like(5, 700, seed=2)
    a = call(x, temperature=torch.tensor([0.0, 1.0, 0.8, 1.2, 0.5]),
             top_k=torch.tensor([5, 0, 40, 0, 0]), top_p=torch.tensor([1.0, 1.0, 0.9, 0.7, 1.0],
                                                                        dtype=torch.float64),
             min_p=torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1]))
    assert_split_matches(a, chunks)


@pytest.mark.parametrize("case", ["greedy", "plain", "top_k_top_p", "small_top_k"])
def test_ties_and_odd_rows_across_chunk_boundaries(case):
    # chunks of 128: equal maxima in chunks 0 and 2 (greedy takes the first), a NaN,
    # -inf chunks, a row of one value, a row with +inf, a row with no finite logit
    x = llm_like(6, 600, seed=4)
    x[0, 100] = x[0, 300] = x[0].max() + 5.0
    x[1, :256] = float("-inf")
    x[1, 400] = float("nan")
    x[2] = 1.5
    x[3, 520] = float("inf")
    x[4] = float("-inf")
    x[5, 128:] = float("-inf")
    # a top-k of 3 settles in launch 1 (5 x 3 candidates, CHUNK 16); the row of one value
    # gathers whole chunks, more than the scratch: the histogram way, in that launch
    params = dict(temperature=0.8, top_k=3, top_p=0.9) if case == "small_top_k" \
        else CASES[case]
    a = call(x, **params)
    cfg = dict(block=64, bin_bits=4, cap=64 if case == "small_top_k" else 16)
    assert collect_launch(a, 5, cfg) == (case == "top_k_top_p")
    assert_split_matches(a, 5, cfg)


# A top-k small enough that S x k candidates fit twice the scratch stage's registers
# (CHUNK: 256 here; lane_k 32) and half the scratch (1024) settles in launch 1: each
# chunk gathers its own candidates after its pass 1 (_one_launch_row), and the call
# skips the collect launch
ONE = dict(block=256, bin_bits=5, cap=1024)
ONE_CASES = {
    "top_k": dict(top_k=4),
    "top_k_top_p": dict(temperature=0.7, top_k=4, top_p=0.9),
    "all": dict(temperature=0.9, top_k=3, top_p=0.95, min_p=0.02),
    "joint_no_top_p": dict(temperature=1.3, top_k=4, min_p=0.05, order="joint"),
}


def collect_launch(a, chunks, cfg):
    kwargs = sampler.split_kernel_args(a, chunks, **cfg)[2]
    return sampler.collect_launch(a, chunks, kwargs)


@pytest.mark.parametrize("case, chunks", [(c, s) for c in ONE_CASES for s in CHUNKS],
                         ids=[f"{c}-S{s}" for c in ONE_CASES for s in CHUNKS])
def test_a_small_top_k_settles_in_the_first_launch(case, chunks):
    # V = 600 in tiles of 256: S = 2 cuts 512 + 88, S = 3 and 7 leave chunks empty, S = 64
    # (64 x 4 = CHUNK) 61 of them; every row's token and reads as one program per row's
    a = call(llm_like(3, 600, seed=len(case) + chunks), **ONE_CASES[case])
    assert not collect_launch(a, chunks, ONE)
    assert_split_matches(a, chunks, ONE)


def test_rows_past_the_first_launch_still_collect():
    # S x k over the bound (512 here), a top-k past lane_k, or top-p in the joint order
    # (its Z is the whole row's) launch the collect; so does a per-row top-k, which mixes
    # rows that settle in launch 1 and rows that wait
    x = llm_like(3, 600, seed=8)
    assert collect_launch(call(x, top_k=9), 64, ONE)
    assert not collect_launch(call(x, top_k=8), 64, ONE)
    assert not collect_launch(call(x, top_k=32), 7, ONE)
    assert collect_launch(call(x, top_k=33), 7, ONE)        # past lane_k
    assert collect_launch(call(x, top_k=4, top_p=0.9, order="joint"), 2, ONE)
    assert collect_launch(call(x, top_k=torch.tensor([4, 4, 4])), 2, ONE)
    a = call(x, temperature=0.8, top_k=torch.tensor([4, 40, 0]),
             top_p=torch.tensor([0.9, 0.9, 1.0], dtype=torch.float64),
             min_p=torch.tensor([0.0, 0.0, 0.05]))
    assert_split_matches(a, 7, ONE)
    # 17 chunks of one tile: 17 x 31 candidates, more than 512 (test_kernel.py's
    # group-maxima test sees the reads of a row that takes launch 1 regardless)
    wide = call(llm_like(1, 17 * 256, seed=9), top_k=31)
    assert collect_launch(wide, 17, ONE)
    assert_split_matches(wide, 17, ONE)
    assert_split_matches(call(x, top_k=4, top_p=0.9, order="joint"), 2, ONE)


@pytest.mark.parametrize("params", [dict(top_k=30), dict(temperature=0.6, top_k=28, top_p=0.8),
                                    dict(temperature=0.9, top_k=30, top_p=0.95, min_p=0.01),
                                    dict(temperature=0.7, top_k=10, top_p=0.9)],
                         ids=["top_k", "top_k_top_p", "all", "small_top_p"])
def test_the_last_program_narrows_the_chunks_candidates(params):
    # 9 chunks of one tile, some 30 candidates each: more than CHUNK (256), so the last
    # program keeps the top-k set alone (_top_k_of_scratch) before the scratch stage;
    # some 90 with a top-k of 10 and top-p: narrowed too, so that top-p runs by pairs
    # (_small_top_p, at most 16 entries at this tile); ties at the k-th key (row 1) are
    # all kept
    x = llm_like(2, 9 * 256, seed=10)
    top = x[1].topk(40).values
    x[1, torch.isin(x[1], top[25:35])] = top[29]
    a = call(x, **params)
    assert not collect_launch(a, 9, ONE)
    assert_split_matches(a, 9, ONE)


def test_top_p_alone_sums_its_bin_masses_in_a_launch_of_their_own():
    # top-p alone's search wants the exact masses of pass 1's bins (a read of its own);
    # split, the chunks sum them before the search runs, so a row that would not have
    # needed them (here: the scratch holds every token) reads once more than unsplit.
    # (Rows of top-p alone in a call with top-k: a call without it keeps them unsplit.)
    a = call(llm_like(2, 300, seed=6), top_k=torch.tensor([0, 0]), top_p=0.8)
    for cfg, extra in ((SMALL, 0), (dict(block=64), 1)):
        tokens, logprobs, _, passes, _ = sampler.launch(a, False, stats=True, chunks=3, **cfg)
        whole = sampler.launch(a, False, stats=True, chunks=0, **cfg)
        assert torch.equal(tokens, reference.draw(a)[0])
        assert torch.equal(tokens, whole[0])
        assert (passes - whole[3]).tolist() == [extra] * 2, (passes, whole[3])


def test_rows_with_more_candidates_than_the_scratch():
    # top-p 0.99 at T = 3 keeps most of the row: more candidates than the scratch holds,
    # so the last program of the first launch finishes each row alone (the dense path)
    a = call(llm_like(3, 300, seed=13), temperature=3.0, top_p=0.99)
    kept = (reference.probs(a) > 0).sum(1)
    assert bool((kept > SMALL["cap"]).all()), kept
    assert_split_matches(a, 3)


@pytest.mark.parametrize("noise_test", [1, 2], ids=["loosest_bounds", "spoiled_bounds"])
@pytest.mark.parametrize("path", ["plain", "scratch", "dense"])
def test_chunk_proofs_hold_at_the_margin_and_fall_back_exactly(path, noise_test):
    # 1: every proof still holds (no fallback); 2: none holds, and the exact race over
    # the whole row decides, counted as a fallback: plain rows in the last program of
    # the first launch, after the proofs of their chunks; filtered rows in the last
    # program of the second launch (scratch race) or the first (dense rows)
    sizes, params = RACE_PATHS[path]
    a = call(llm_like(3, 300, seed=13), **params)
    tokens, logprobs, _, passes, fallbacks = sampler.launch(
        a, False, stats=True, chunks=3, noise_test=noise_test, **sizes)
    ref_tokens, ref_logprobs = reference.draw(a)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)
    assert fallbacks.tolist() == [noise_test - 1] * 3


def test_without_log_probs():
    a = call(llm_like(2, 300, seed=5), temperature=0.9)
    tokens, logprobs, *_ = sampler.launch(a, False, return_logprobs=False, chunks=3, **SMALL)
    assert logprobs is None
    assert torch.equal(tokens, reference.draw(a)[0])


def test_the_chunk_count_follows_the_batch(monkeypatch):
    # on a 132-SM GPU: one wave of 132 programs; no split on CPU, or past a row per SM
    cuda = torch.device("cuda")
    monkeypatch.setattr(sampler, "_programs_for", lambda device: 264)
    monkeypatch.delenv(sampler.CHUNKS_ENV, raising=False)
    V = 128256
    assert sampler.split_plan(1, V, cuda, filtered=False) == (126, 1024)
    assert sampler.split_plan(2, V, cuda, filtered=False) == (63, 2048)
    assert sampler.split_plan(4, V, cuda, filtered=False) == (32, 4096)   # 33 wanted
    assert sampler.split_plan(8, V, cuda, filtered=False) == (16, 4096)
    assert sampler.split_plan(1, V, cuda, filtered=True) == (32, 4096)
    assert sampler.split_plan(64, V, cuda, filtered=True) == (2, 4096)
    assert sampler.split_plan(100, V, cuda, filtered=False) == (2, 4096)  # at least 2
    assert sampler.split_plan(132, V, cuda, filtered=True) == (2, 4096)
    assert sampler.split_plan(133, V, cuda, filtered=True) is None
    assert sampler.split_plan(8, V, cuda, filtered=False, programs=264) == (32, 4096)  # 33
    assert sampler.split_plan(1, 1000, cuda, filtered=False) is None    # one tile
    assert sampler.split_plan(1, V, torch.device("cpu"), filtered=False) is None
    assert sampler.split_plan(1, V, torch.device("cpu"), filtered=False, chunks=3) == (3, 4096)
    monkeypatch.setenv(sampler.CHUNKS_ENV, "7")
    assert sampler.split_plan(200, V, torch.device("cpu"), filtered=True) == (7, 4096)
