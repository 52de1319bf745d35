"""Distribution demo: how temperature, top-k, top-p and min-p reshape one next-token row.

The classic example of the decoding tutorials: after the prompt "every effort moves you",
a toy model's next-token logits over a nine-word vocabulary.  For each setting, the demo
prints every token's filtered probability (``fused_sampler.filtered_probs``) beside the
frequencies of N draws made by ONE ``fused_sampler.sample`` call on the row repeated N
times with per-row seeds, both through the same backend.  Run it with::

    python -m fused_sampler demo [--draws N] [--seed S] [--device cpu|cuda]
    TRITON_INTERPRET=1 python -m fused_sampler demo      # the kernel on CPU
"""
from __future__ import annotations

import argparse
import math
import textwrap

import torch

import fused_sampler as fs
from ._api import interpreter_enabled, resolve_backend

PROMPT = "every effort moves you"
VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]
SETTINGS = [  # (label, keyword arguments shared by filtered_probs and sample)
    ("temperature=0 (greedy)", dict(temperature=0.0)),
    ("temperature=0.1", dict(temperature=0.1)),
    ("temperature=1", dict(temperature=1.0)),
    ("temperature=5", dict(temperature=5.0)),
    ("top_k=3", dict(top_k=3)),
    ("top_p=0.9", dict(top_p=0.9)),
    ("min_p=0.1", dict(min_p=0.1)),
    ("temperature=5, top_k=3", dict(temperature=5.0, top_k=3)),
]
BAR = 30  # characters for 100%


def backend_line(backend: str, device: torch.device) -> str:
    """Which code ran the demo, and where."""
    if resolve_backend(backend, device) == "triton":
        if device.type == "cuda":
            return f"Triton kernel on CUDA ({torch.cuda.get_device_name(device)})"
        return "Triton kernel in the interpreter on CPU (TRITON_INTERPRET=1)"
    if device.type == "cpu" and not interpreter_enabled():
        return ("PyTorch reference on CPU "
                "(set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter)")
    return f"PyTorch reference on {device.type.upper()}"


def bar(p: float) -> str:
    return ("#" * round(p * BAR)).ljust(BAR)


def pct(p: float) -> str:
    return " <0.01%" if 0 < p < 5e-5 else f"{100 * p:6.2f}%"


def noise_tv(probs: list[float], n: int) -> float:
    """Expected total variation distance of n exact draws from probs (normal approximation):
    what sampling noise alone gives, to read the measured distance against."""
    return 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * n)) for p in probs)


def show(label: str, kwargs: dict, logits: torch.Tensor, n: int, seed: int, backend: str):
    probs = fs.filtered_probs(logits, backend=backend, **kwargs)[0].cpu()
    rows = logits.expand(n, -1)  # a stride-0 batch of n identical rows: no copy
    seeds = torch.arange(n, dtype=torch.int64, device=logits.device) + seed
    tokens = fs.sample(rows, seed=seeds, offset=0, validate=False, backend=backend, **kwargs)
    freq = torch.bincount(tokens.cpu(), minlength=len(VOCAB)).double() / n
    print(f"\n[{label}]   kept {int((probs > 0).sum())} of {len(VOCAB)} tokens")
    print(f"  {'token':<8} {'prob':>7}  {'filtered probability':<{BAR}} "
          f"{'draws':>7}  frequency in {n} draws")
    for word, p, f in zip(VOCAB, probs.tolist(), freq.tolist()):
        print(f"  {word:<8} {pct(p)}  {bar(p)} {pct(f)}  {bar(f)}".rstrip())
    tv = 0.5 * (freq - probs.double()).abs().sum().item()
    print(f"  draws vs probabilities: total variation {tv:.4f} "
          f"(sampling noise alone gives {noise_tv(probs.tolist(), n):.4f} on average)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fused_sampler demo", description=__doc__
                                 .split("\n")[0])
    ap.add_argument("--draws", type=int, default=None,
                    help="draws per setting (default 1000; 200 in Triton's interpreter)")
    ap.add_argument("--seed", type=int, default=1234, help="base seed: row i uses seed S + i")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    try:
        interpreted = device.type == "cpu" and resolve_backend(args.backend, device) == "triton"
    except ValueError:          # --backend triton where it cannot run: reported below
        interpreted = False
    if args.draws is None:
        # the interpreter runs one program per draw at ~0.1 s each: 1000 x 8 settings
        # would take a quarter of an hour
        args.draws = 200 if interpreted else 1000
        if interpreted:
            print("(Triton's interpreter runs one program per draw, about 0.1 s each: 200 "
                  "draws per setting; --draws 1000 for the full count)")
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    logits = torch.tensor([LOGITS], dtype=torch.float32, device=device)

    print(f'fused_sampler demo: the next token after "{PROMPT}"')
    try:
        where = backend_line(args.backend, device)
    except ValueError as e:  # --backend triton where it cannot run
        ap.error(str(e))
    print(f"backend: {where}")
    print(textwrap.fill("logits: " + ", ".join(f"{w} {v:.2f}" for w, v in zip(VOCAB, LOGITS)),
                        width=96, subsequent_indent="        "))
    print(f"draws: one sample() call per setting on {args.draws} copies of the row, "
          f"seeds {args.seed}..{args.seed + args.draws - 1}, offset 0")
    for label, kwargs in SETTINGS:
        show(label, kwargs, logits, args.draws, args.seed, args.backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
