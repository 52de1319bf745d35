"""Top-level PyTorch operations one fs.distributed.sample call makes (torch.profiler, one
rank of a gloo group on CPU): what an eager call launches, for docs/design.md.

    TRITON_INTERPRET=1 python scripts/tp_ops.py     # the kernel's backends, interpreted
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from fused_sampler import distributed as fsd  # noqa: E402


def main(B=64, n=16032, W=8):
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=0,
                                world_size=1)
        x = torch.randn(B, n)
        for backend in ("reference", "auto"):
            for params in ({}, dict(top_k=50, top_p=0.9)):
                kw = dict(vocab_start=n, vocab_size=W * n, seed=1, backend=backend,
                          validate=False, **params)
                fsd.sample(x, **kw)                      # compiles, warms up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fsd.sample(x, **kw)
                top = [e for e in prof.events() if e.cpu_parent is None]
                print(f"backend {backend} {params or 'plain'}: {len(top)} operations")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
