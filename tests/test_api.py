"""The wrapper: argument errors name the argument, backend dispatch, seeds and generators."""
import os

import pytest
import torch

import fused_sampler as fs
from fused_sampler import _api

X = torch.randn(3, 20)


def raises(exc, match, **kw):
    logits = kw.pop("logits", X)
    for call in (fs.sample, fs.filtered_probs, fs.reference.sample):
        if call is fs.filtered_probs and ({"seed", "offset", "generator", "validate"} & set(kw)):
            continue
        with pytest.raises(exc, match=match):
            call(logits, **kw)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(logits=[1.0, 2.0]), TypeError, "logits"),
    (dict(logits=torch.randn(2, 3, 4)), ValueError, r"logits: expected shape"),
    (dict(logits=torch.randint(0, 5, (2, 3))), ValueError, r"logits: dtype"),
    (dict(logits=torch.randn(2, 3, dtype=torch.float64)), ValueError, r"logits: dtype"),
    (dict(logits=torch.randn(2, 0)), ValueError, r"logits: the vocabulary is empty"),
    (dict(temperature=-0.5), ValueError, r"temperature: must be >= 0"),
    (dict(temperature=float("nan")), ValueError, r"temperature: is NaN"),
    (dict(temperature="hot"), TypeError, r"temperature"),
    (dict(temperature=None), TypeError, r"temperature"),
    (dict(top_p=0.0), ValueError, r"top_p: must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p"),
    (dict(top_p=float("nan")), ValueError, r"top_p: is NaN"),
    (dict(min_p=-0.1), ValueError, r"min_p: must be in \[0, 1\]"),
    (dict(min_p=1.1), ValueError, r"min_p"),
    (dict(top_k=2.5), TypeError, r"top_k"),
    (dict(top_k=True), TypeError, r"top_k"),
    (dict(top_k=torch.tensor([1.0, 2.0, 3.0])), ValueError, r"top_k: tensor dtype"),
    (dict(top_k=torch.tensor([1, 2])), ValueError, r"top_k: a per-row tensor must have shape"),
    (dict(temperature=torch.ones(3, 1)), ValueError, r"temperature: a per-row tensor"),
    (dict(temperature=torch.tensor(1.0)), ValueError, r"temperature: .*0-d"),
    (dict(top_p=torch.tensor([1, 1, 1])), ValueError, r"top_p: tensor dtype"),
    (dict(order="bottom_first"), ValueError, r"order: expected one of"),
    (dict(backend="cuda"), ValueError, r"backend: expected one of"),
    (dict(temperature=torch.tensor([1.0, -1.0, 0.5])), ValueError,
     r"temperature: rows \[1\] are negative"),
    (dict(temperature=torch.tensor([1.0, float("nan"), 0.5])), ValueError,
     r"temperature: rows \[1\] are NaN"),
    (dict(top_p=torch.tensor([0.5, 0.0, 1.0])), ValueError, r"top_p: rows \[1\] are outside"),
    (dict(top_p=torch.tensor([0.5, float("nan"), 1.0])), ValueError, r"top_p: rows \[1\]"),
    (dict(min_p=torch.tensor([0.5, 2.0, 0.0])), ValueError, r"min_p: rows \[1\] are outside"),
    (dict(seed=1.5), TypeError, r"seed"),
    (dict(seed=torch.tensor([1, 2, 3], dtype=torch.int32)), ValueError, r"seed: tensor dtype"),
    (dict(seed=torch.tensor([1, 2])), ValueError, r"seed: a per-row tensor"),
    (dict(seed=2 ** 65), ValueError, r"seed: .* 64 bits"),
    (dict(offset=torch.tensor([1, 2, 3], dtype=torch.int32)), ValueError, r"offset: tensor"),
    (dict(offset="x"), TypeError, r"offset"),
    (dict(generator=42), TypeError, r"generator"),
])
def test_argument_errors_name_the_argument(kw, exc, match):
    raises(exc, match, **kw)


@pytest.mark.parametrize("row_fill, match", [
    (float("nan"), r"logits: rows \[1\] contain NaN"),
    (float("inf"), r"logits: rows \[1\] contain \+inf"),
    (float("-inf"), r"logits: rows \[1\] have no finite logit"),
])
def test_bad_logit_rows_are_named_when_validating(row_fill, match):
    logits = torch.randn(3, 10)
    logits[1] = row_fill
    with pytest.raises(ValueError, match=match):
        fs.sample(logits)
    with pytest.raises(ValueError, match=match):
        fs.filtered_probs(logits)
    # without validation nothing is checked and every row still gets a token
    tokens = fs.sample(logits, validate=False, seed=0)
    assert bool(((tokens >= 0) & (tokens < 10)).all())


def test_parameter_tensor_on_another_device_is_an_error():
    meta = torch.ones(3, device="meta")
    with pytest.raises(ValueError, match="temperature: tensor is on meta"):
        fs.sample(X, temperature=meta)


def test_backend_dispatch():
    cpu = torch.device("cpu")
    assert _api.resolve_backend("reference", cpu) == "reference"
    interp = _api.interpreter_enabled()
    assert _api.resolve_backend("auto", cpu) == ("triton" if interp else "reference")
    if not interp:
        with pytest.raises(ValueError, match="backend: 'triton' cannot run on cpu"):
            fs.sample(X, backend="triton")


def test_generator_and_default_generator_make_runs_repeatable():
    logits = torch.zeros(16, 500)
    torch.manual_seed(7)
    a = fs.sample(logits)
    b = fs.sample(logits)
    torch.manual_seed(7)
    assert torch.equal(fs.sample(logits), a)
    assert not torch.equal(a, b)                       # the default generator advanced
    g = torch.Generator().manual_seed(3)
    c = fs.sample(logits, generator=g)
    d = fs.sample(logits, generator=g)
    assert not torch.equal(c, d)
    assert torch.equal(fs.sample(logits, generator=torch.Generator().manual_seed(3)), c)
    assert len(set(c.tolist())) > 10                  # one seed per row: independent rows
    # an explicit seed wins over the generator and leaves it untouched
    state = g.get_state()
    fs.sample(logits, seed=5, generator=g)
    assert torch.equal(g.get_state(), state)


def test_reference_and_kernel_share_the_draw():
    # same seed and offset: the same token from both backends (the Philox stream and
    # the race are the same computation)
    logits = torch.randn(8, 300) * 2
    seeds = torch.arange(8) * 1000
    for kw in (dict(), dict(top_p=0.9, top_k=40), dict(min_p=0.1, temperature=0.6)):
        want = fs.reference.sample(logits, seed=seeds, offset=3, **kw)
        got = fs.sample(logits, seed=seeds, offset=3, **kw)
        assert torch.equal(got, want)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                    reason="the kernel runs on CPU only in the interpreter")
def test_auto_uses_the_kernel_under_the_interpreter():
    assert _api.resolve_backend("auto", torch.device("cpu")) == "triton"
