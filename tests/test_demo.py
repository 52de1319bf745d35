"""The distribution demo (python -m fused_sampler demo) on CPU with the PyTorch reference."""
from __future__ import annotations

import re

import pytest
import torch

import fused_sampler as fs
from fused_sampler import demo

ROW = re.compile(r"^  (\w+)\s+(<?[\d.]+)%\s+#*\s+(<?[\d.]+)%")


def sections(out: str) -> dict[str, list[tuple[str, str, str]]]:
    """{setting label: [(token, printed probability %, printed draw frequency %)]}."""
    found, rows = {}, None
    for line in out.splitlines():
        if line.startswith("["):
            rows = found[line[1:line.index("]")]] = []
        elif rows is not None and (m := ROW.match(line)):
            rows.append(m.groups())
    return found


@pytest.fixture
def output(capsys):
    assert demo.main(["--draws", "200", "--device", "cpu", "--backend", "reference",
                      "--seed", "7"]) == 0
    return capsys.readouterr().out


def test_table_lists_every_word_setting_and_backend(output):
    assert "every effort moves you" in output
    assert re.search(r"^backend: PyTorch reference on CPU", output, re.M)
    assert "200 copies of the row, seeds 7..206, offset 0" in output
    found = sections(output)
    assert list(found) == [label for label, _ in demo.SETTINGS]
    for label, rows in found.items():
        assert [r[0] for r in rows] == demo.VOCAB, label
        draws = sum(float(f.lstrip("<")) for _, _, f in rows)
        assert draws == pytest.approx(100.0, abs=0.05), label
    assert output.count("draws vs probabilities: total variation") == len(demo.SETTINGS)
    assert max(len(line) for line in output.splitlines()) <= 100


def test_greedy_draws_are_all_forward(output):
    rows = {tok: (p, f) for tok, p, f in sections(output)["temperature=0 (greedy)"]}
    assert rows["forward"] == ("100.00", "100.00")
    assert all(f == "0.00" for tok, (_, f) in rows.items() if tok != "forward")


def test_printed_probabilities_match_filtered_probs(output):
    kwargs = dict(demo.SETTINGS)["temperature=5"]
    want = fs.filtered_probs(torch.tensor(demo.LOGITS), backend="reference", **kwargs)
    got = sections(output)["temperature=5"]
    for (tok, p, _), w in zip(got, want.tolist()):
        assert float(p) == pytest.approx(100 * w, abs=0.006), tok


def test_auto_backend_line_names_the_reference_and_the_interpreter_hint(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert demo.main(["--draws", "5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert ("backend: PyTorch reference on CPU (set TRITON_INTERPRET=1 to run the kernel in "
            "Triton's interpreter)") in out
    assert "closer" in out and "you" in out
