"""The bundled character-level model and its demo command (CPU, a few seconds)."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch

from fused_sampler.charlm import PRESETS, TEXT, WEIGHTS, CharLM, Vocab, load_model, main
from fused_sampler.generate import generate as generate_any_backend

# the reference sampler: tests/conftest.py turns on Triton's (slow) interpreter on CPU
generate = functools.partial(generate_any_backend, backend="reference")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm():
    return load_model()


def _ids(vocab, text, rows=1):
    return torch.tensor([vocab.encode(text)] * rows)


def test_weights_load(lm):
    model, vocab = lm
    assert isinstance(model, CharLM) and not model.training
    assert WEIGHTS.stat().st_size < 4_000_000
    assert len(vocab) == model.config["vocab_size"] == model.head.out_features
    assert set("ROMEO: \n.,;'abcxyz") <= set(vocab.chars)
    meta = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["meta"]
    # the committed model has learned the text: well under log(80) = 4.38 nats/char
    assert meta["val_loss"] < 2.0


def test_vocab_round_trip_and_unknown_characters(lm):
    _, vocab = lm
    assert vocab.decode(vocab.encode("ROMEO:\nO Juliet!")) == "ROMEO:\nO Juliet!"
    with pytest.raises(ValueError, match="vocabulary"):
        vocab.encode("ROMEO: \u00e9")


def test_generation_is_deterministic_for_a_seed_and_holds_its_length(lm):
    model, vocab = lm
    ids = _ids(vocab, "ROMEO:", rows=2)
    a = generate(model, ids, max_new_tokens=50, top_p=0.9, seed=123)
    b = generate(model, ids, max_new_tokens=50, top_p=0.9, seed=123)
    c = generate(model, ids, max_new_tokens=50, top_p=0.9, seed=124)
    assert a.sequences.shape == (2, 50) and a.lengths.tolist() == [50, 50]
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.sequences[0], a.sequences[1])       # same seed, same prompt
    assert not torch.equal(a.sequences, c.sequences)
    assert len(vocab.decode(a.sequences[0])) == 50


def test_greedy_equals_argmax_decoding(lm):
    model, vocab = lm
    ids = _ids(vocab, "JULIET:\n")
    got = generate(model, ids, max_new_tokens=40, temperature=0.0).sequences[0]
    want, state, x = [], None, ids
    with torch.no_grad():
        for _ in range(40):
            out = model(x, past_key_values=state)
            state = out.past_key_values
            x = out.logits[:, -1].argmax(-1, keepdim=True)
            want.append(int(x))
    assert got.tolist() == want


def test_model_refuses_padding(lm):
    model, vocab = lm
    ids = _ids(vocab, "ROMEO:")
    with pytest.raises(ValueError, match="padding"):
        generate(model, ids, torch.tensor([[0, 1, 1, 1, 1, 1]]), max_new_tokens=2)


def test_cli_shows_every_preset_and_the_backend(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)     # "auto" is then the reference
    assert main(["ROMEO:", "--chars", "30", "--device", "cpu", "--time"]) == 0
    out = capsys.readouterr().out
    assert "backend 'reference' on cpu" in out
    for label, *_ in PRESETS:
        assert f"--- {label} ---\nROMEO:" in out
    assert "sampling" in out and "chars/s" in out


def test_cli_avoids_the_slow_interpreter_unless_asked(capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main(["ROMEO:", "--chars", "5", "--device", "cpu", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert "backend 'reference' on cpu" in captured.out and "--backend triton" in captured.err


def test_cli_single_setting_and_bad_prompt(capsys):
    assert main(["KING:", "--chars", "20", "--top-k", "3", "--temperature", "0.8",
                 "--device", "cpu", "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "--- temperature=0.8, top_k=3 ---\nKING:" in out
    assert out.count("\n--- ") == 1
    with pytest.raises(SystemExit):
        main(["\u00e9", "--chars", "5", "--device", "cpu", "--backend", "reference"])


def test_training_text_and_its_preparation(tmp_path):
    text = TEXT.read_text("ascii")
    assert 500_000 < len(text) < 2_000_000 and "ROMEO:\n" in text
    assert Vocab.from_text(text).chars == load_model()[1].chars
    spec = importlib.util.spec_from_file_location("train_charlm",
                                                  ROOT / "scripts" / "train_charlm.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    play = "ACT I.\n\nRomeo.\nO, she doth teach the torches.\n\n\n\nFirst Citizen.\nPeace!\n"
    for name in train.PLAYS:
        (tmp_path / f"{name}.txt").write_text(play)
    out = train.prepare_text(tmp_path)
    assert out.startswith("ACT I.\n\nROMEO:\nO, she doth teach the torches.\n\n"
                          "FIRST CITIZEN:\nPeace!\n")
