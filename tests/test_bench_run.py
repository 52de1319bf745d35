"""The benchmark script's CPU dry run, with its timing variants (bench/run.py)."""
import json

import pytest

from bench import run as bench_run
from bench import workloads as wl


def test_timing_variants_name_their_base_implementation():
    assert wl.split_impl("fused_sampler") == ("fused_sampler", "events")
    assert wl.split_impl("fused_sampler_per_row@graph") == ("fused_sampler_per_row", "graph")
    assert wl.split_impl("fused_sampler@host") == ("fused_sampler", "host")
    assert wl.applies("flashinfer_joint@graph", "top_k_top_p")
    assert not wl.applies("flashinfer_joint@graph", "plain")
    with pytest.raises(ValueError, match="unknown timing"):
        wl.split_impl("fused_sampler@wall")


def test_dry_run_times_host_variant_and_notes_that_graphs_need_a_gpu(tmp_path):
    out = tmp_path / "dry.json"
    assert bench_run.main(["--dry-run", "--no-plot", "--reps", "1", "--cases", "plain",
                           "--dtypes", "float32", "--out", str(out),
                           "--impls", "fused_sampler,fused_sampler@host,fused_sampler@graph"]) == 0
    results = bench_run.check_schema(json.loads(out.read_text()))
    impls = {r["impl"] for r in results["rows"]}
    assert impls == {"fused_sampler", "fused_sampler@host"}
    assert all(r["median_us"] > 0 for r in results["rows"])
    notes = bench_run.notes_path(out).read_text()
    assert "fused_sampler@graph: not run: CUDA graphs need a GPU" in notes


@pytest.mark.parametrize("case", ["plain", "top_k_top_p"])
def test_forced_chunk_counts_draw_the_plans_tokens(case):
    # the sweep's implementations time the split kernel at other chunk counts and tiles:
    # the same call, so the same tokens as fused_sampler and one program per row
    if not wl.interpreter_enabled():
        pytest.skip("Triton was imported without TRITON_INTERPRET=1")
    x = wl.make_logits(2, 5000, "float32")
    want = wl.build("fused_sampler", case, 2, "cpu")(x)
    for impl in ("fused_sampler_per_row", "fused_sampler_c4", "fused_sampler_c16"):
        assert wl.build(impl, case, 2, "cpu")(x).tolist() == want.tolist(), impl
    assert wl.build(wl.FIRST_LAUNCH_IMPL, case, 2, "cpu")(x).shape == (2,)
    assert wl.split_impl("fused_sampler_c4@graph") == ("fused_sampler_c4", "graph")
    assert wl.applies(f"{wl.FIRST_LAUNCH_IMPL}@graph", case)
