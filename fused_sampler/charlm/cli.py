"""``python -m fused_sampler generate "ROMEO:"``: what the sampling knobs do to real text.

By default one batch holds one row per preset below, every row with the same prompt and
the same seed, so the rows share their random numbers and differ only by the knobs
(passed to :func:`fused_sampler.sample` as per-row tensors).  Give any knob on the command
line to sample with that one setting instead.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .._api import resolve_backend
from ..generate import StepTimer, generate
from .model import WEIGHTS, load_model

# (label, temperature, top_k, top_p, min_p); 0 means "off" for top_k and min_p and 1.0
# for top_p, so that all rows fit in per-row tensors of one batch.
PRESETS = [
    ("greedy (temperature=0)", 0.0, 0, 1.0, 0.0),
    ("temperature=0.7", 0.7, 0, 1.0, 0.0),
    ("temperature=1.0 (plain sampling)", 1.0, 0, 1.0, 0.0),
    ("temperature=1.5", 1.5, 0, 1.0, 0.0),
    ("temperature=1.0, top_k=5", 1.0, 5, 1.0, 0.0),
    ("temperature=1.0, top_p=0.8", 1.0, 0, 0.8, 0.0),
    ("temperature=1.5, min_p=0.2", 1.5, 0, 1.0, 0.2),
]


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m fused_sampler generate",
        description="Sample Shakespeare-like text from the bundled character-level model "
                    "with fused_sampler, showing what temperature, top-k, top-p and min-p "
                    "do side by side.")
    p.add_argument("prompt", nargs="?", default="ROMEO:",
                   help="text to continue (default %(default)r); \\n is a newline")
    p.add_argument("--chars", type=int, default=200, help="characters to generate")
    p.add_argument("--seed", type=int, default=0, help="seed shared by every row")
    p.add_argument("--temperature", type=float, help="sample one setting: temperature")
    p.add_argument("--top-k", type=int, help="one setting: top-k")
    p.add_argument("--top-p", type=float, help="one setting: top-p")
    p.add_argument("--min-p", type=float, help="one setting: min-p")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if present)")
    p.add_argument("--backend", choices=["auto", "triton", "reference"],
                   help="sampler backend; default: the Triton kernel on CUDA, the reference "
                        "on CPU (the kernel in Triton's interpreter takes seconds a step)")
    p.add_argument("--weights", default=str(WEIGHTS), help="model file (default: bundled)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads while generating (default 1: a step of this "
                        "model is too small to split)")
    p.add_argument("--time", action="store_true",
                   help="also print characters per second and the sampling share of a step")
    return p.parse_args(argv)


def _rows(args):
    """(labels, per-row knob tensors) for the presets or for the one given setting."""
    single = any(v is not None for v in (args.temperature, args.top_k, args.top_p, args.min_p))
    if single:
        t = 1.0 if args.temperature is None else args.temperature
        setting = (t, args.top_k or 0, 1.0 if args.top_p is None else args.top_p,
                   args.min_p or 0.0)
        label = ", ".join(f"{k}={v}" for k, v in zip(
            ("temperature", "top_k", "top_p", "min_p"),
            (t, args.top_k, args.top_p, args.min_p)) if v is not None)
        presets = [(label,) + setting]
    else:
        presets = PRESETS
    labels = [p[0] for p in presets]
    temps, ks, ps, mps = zip(*(p[1:] for p in presets))
    return labels, temps, ks, ps, mps


def main(argv: list[str] | None = None) -> int:
    """Run the demo; ``argv`` as on the command line after ``generate``.  Returns 0."""
    args = parse(argv)
    # One step of a 668 K-parameter GRU is too small to share out: with 2 OpenMP threads
    # it ran about 5x slower on a busy 2-core machine.  Restored afterwards (main is also called
    # from tests and other code in the same process).
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if args.device == "auto" else args.device))
    model, vocab = load_model(args.weights, dev)
    prompt = args.prompt.replace("\\n", "\n")
    try:
        prompt_ids = vocab.encode(prompt)
    except ValueError as e:
        raise SystemExit(f"prompt: {e}")
    try:
        backend = resolve_backend(args.backend or "auto", dev)
    except ValueError as e:
        raise SystemExit(str(e))
    if backend == "triton" and dev.type == "cpu":
        # TRITON_INTERPRET=1 is set: the interpreted kernel costs ~2 s per step here, which
        # would turn a demo of seconds into minutes; run it only when asked by name.
        if args.backend is None:
            backend = "reference"
            print("note: TRITON_INTERPRET is set, but the interpreted kernel takes seconds "
                  "a step; sampling with the reference (--backend triton to insist)",
                  file=sys.stderr)
        else:
            print("note: the Triton kernel runs in Triton's interpreter on CPU: seconds "
                  "per character", file=sys.stderr)
    labels, temps, ks, ps, mps = _rows(args)
    n = len(labels)
    ids = torch.tensor([prompt_ids] * n, device=dev)
    timer = StepTimer() if args.time else None
    t0 = time.perf_counter()
    out = generate(model, ids, max_new_tokens=args.chars, seed=args.seed, timer=timer,
                   backend=backend,
                   temperature=torch.tensor(temps, device=dev),
                   top_k=torch.tensor(ks, device=dev),
                   top_p=torch.tensor(ps, device=dev),
                   min_p=torch.tensor(mps, device=dev))
    seconds = time.perf_counter() - t0
    print(f"# {args.chars} characters after {prompt!r}, seed {args.seed} shared by every row; "
          f"sampled by fused_sampler backend '{backend}' on {dev.type}")
    for label, row in zip(labels, out.sequences):
        print(f"\n--- {label} ---\n{prompt}{vocab.decode(row)}")
    if timer is not None:
        s = timer.summary(n)
        print(f"\n# {n} rows x {args.chars} chars in {seconds:.2f} s: "
              f"{n * args.chars / seconds:.0f} chars/s; a decode step (batch {n}) takes "
              f"{s['step_ms']:.2f} ms, sampling {s['sample_ms']:.2f} ms of it "
              f"({100 * s['sample_share']:.0f}%)")
    return 0
