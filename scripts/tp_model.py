"""Vocabulary-sharded sampling against gathering the logits: bytes and modelled time.

    python scripts/tp_model.py                      # the table in docs/design.md
    python scripts/tp_model.py --B 1 64 --V 128256 --W 2 4 8 --dtype bfloat16

For each world size W, batch B and vocabulary V it lists the collectives one call of
fused_sampler.distributed.sample makes (``collectives``: checked against the calls the
function really makes by tests/test_distributed.py) and the bytes each rank sends and
receives, next to an all-gather of the [B, V] logits followed by one unsharded sample.
Time is modelled, not measured (no multi-GPU machine here): ring collectives over NVLink
at LINK_GBPS a direction, LATENCY_US per collective, and each rank's reads of its logits
at HBM_GBPS.  Assumed constants, named below.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fused_sampler.distributed import LEVELS, RADIX_BITS, by_candidates  # noqa: E402
from fused_sampler.distributed import _SHARED as SHARED  # noqa: E402

LINK_GBPS = 450.0        # NVLink, one direction, per H100 (NVLink 4: 900 GB/s both ways)
LATENCY_US = 10.0        # one small NCCL collective, launch to completion (assumed)
HBM_GBPS = 3000.0        # one rank's reads of its logits (H100 SXM, ~3 TB/s achieved)
H100_SMS = 132
ITEMSIZE = {"float32": 4, "bfloat16": 2}
BINS = 1 << RADIX_BITS


def collectives(B, top_k=False, top_p=False, min_p=False, order="top_k_first",
                seed_given=True, V=128256, summaries=None):
    """[(op, payload bytes)] of one sample call, in order: op is "all_reduce",
    "all_gather" (payload: one rank's part) or "broadcast".  ``top_k``: False, an int
    (a scalar top-k) or True (a per-row tensor).  ``summaries``: how many a rank sends
    for a plain call (the kernel's: its shard's chunks and head; the reference backend
    sends 1); by default the kernel's on an H100 (plain_summaries).  Every call but a
    candidates one ends in the same race (the kept tokens' under filters)."""
    out = []
    if not seed_given:
        out.append(("broadcast", 8 * B))
    if summaries is None:
        summaries = plain_summaries(B, V, 1)
    race = ("all_gather", 8 * (SHARED + 5) * B * summaries)  # maxima, winners, masses
    if not (top_k or top_p or min_p):                        # plain: one exchange
        return out + [race]
    if by_candidates(top_k, top_p, order, V):                # k candidates and their ties
        return out + [("all_gather", 8 * (SHARED + 3 * top_k + 4) * B)]
    out.append(("all_reduce", 4 * 3 * B))                    # max and the odd-row flags
    joint = order == "joint"
    if top_k and not (top_p and joint):
        out += [("all_reduce", 8 * BINS * B)] * LEVELS       # top-k's counts
    if top_p:
        hists = 2 if top_k and joint else 1                  # joint: top-k's counts too
        out += [("all_reduce", 8 * BINS * B * hists)] * LEVELS
    return out + [race]                                      # the kept tokens' race


def plain_summaries(B, V, W, programs=H100_SMS):
    """Summaries a rank sends for the race on the kernel's backend: its shard's
    chunks, as the kernel cuts a shard V / W wide on a GPU of ``programs`` SMs,
    and its head (fused_sampler.kernels.sampler.shard_plan)."""
    import torch
    from fused_sampler.kernels.sampler import shard_plan
    return shard_plan(B, -(-V // W), torch.device("cuda"), programs=programs)[0] + 1


def ring_bytes(op, payload, W):
    """Bytes one rank sends (= receives) in a ring collective of ``payload``."""
    if W == 1:
        return 0
    if op == "all_reduce":
        return 2 * (W - 1) * payload / W
    if op == "all_gather":
        return (W - 1) * payload
    return payload                                            # broadcast, pipelined


def local_reads(top_k=False, top_p=False, min_p=False, order="top_k_first", V=128256):
    """Reads of the shard by the local steps: plain, one (the kernel's race); a scalar
    top-k, three (nan_to_num's read and write taken as one, torch.topk's as one, and the
    kernel's candidates pass); other filtered calls, the max, each radix level (top-k
    and top-p: LEVELS each, shared under order "joint"; one launch of
    _radix_level_kernel each on the kernel's backends, a read whose SASS issues some 50
    instructions a token: issue-bound, not charged) and the race (_shard_kernel, one
    read, as a plain call's; the max is torch.nan_to_num and amax, a read and a write
    taken as one)."""
    if by_candidates(top_k, top_p, order, V):
        return 3
    if not (top_k or top_p or min_p):
        return 1
    return 2 + (LEVELS if top_k and not (top_p and order == "joint") else 0) + \
        (LEVELS if top_p else 0)


def sharded(B, V, W, dtype, **filters):
    colls = collectives(B, V=V, summaries=plain_summaries(B, V, W), **filters)
    sent = sum(ring_bytes(op, n, W) for op, n in colls)
    t = len(colls) * LATENCY_US + sent / (LINK_GBPS * 1e3)
    reads = local_reads(V=V, **filters)
    t += reads * B * (V / W) * ITEMSIZE[dtype] / (HBM_GBPS * 1e3)
    return len(colls), sent, t


def gathered(B, V, W, dtype):
    """All-gather the logits, then one read of the whole rows by the fused kernel."""
    per_rank = B * (V / W) * ITEMSIZE[dtype]
    sent = ring_bytes("all_gather", per_rank, W)
    t = LATENCY_US + sent / (LINK_GBPS * 1e3) + B * V * ITEMSIZE[dtype] / (HBM_GBPS * 1e3)
    return 1, sent, t


CALLS = {
    "plain": {},
    "top_k 50": dict(top_k=50),
    "top_k 50 + top_p": dict(top_k=50, top_p=True),
    "top_k [B] + top_p": dict(top_k=True, top_p=True),
    "top_k [B] + top_p joint": dict(top_k=True, top_p=True, order="joint"),
    "top_p": dict(top_p=True),
    "min_p": dict(min_p=True),
}


def table(Bs, Vs, Ws, dtype):
    lines = [f"Per call, each rank ({dtype} logits; NVLink {LINK_GBPS:.0f} GB/s a direction, "
             f"{LATENCY_US:.0f} us a collective, HBM {HBM_GBPS:.0f} GB/s: assumed):", "",
             "| call | V | W | B | collectives | sent per rank | modelled us | gather: sent "
             "per rank | gather: modelled us |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, filters in CALLS.items():
        for V in Vs:
            for W in Ws:
                for B in Bs:
                    n, sent, t = sharded(B, V, W, dtype, **filters)
                    _, g_sent, g_t = gathered(B, V, W, dtype)
                    lines.append(f"| {name} | {V} | {W} | {B} | {n} | {_size(sent)} | "
                                 f"{t:.0f} | {_size(g_sent)} | {g_t:.0f} |")
    return "\n".join(lines)


def _size(n):
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--V", type=int, nargs="+", default=[128256])
    p.add_argument("--W", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--dtype", choices=sorted(ITEMSIZE), default="bfloat16")
    args = p.parse_args(argv)
    print(table(args.B, args.V, args.W, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
