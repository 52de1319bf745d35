"""Top-level PyTorch operations one fs.distributed.sample call makes (torch.profiler, one
rank of a gloo group on CPU): what an eager call launches, for docs/design.md.  A kernel
launch counts as one operation (under the interpreter, its copies run inside it).

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


def _launches_as_one_operation():
    """Under the interpreter, each kernel launch counts as one operation, as it is on a
    GPU: the interpreter's own copies of its arguments run inside a record_function."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return
    run = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        with torch.profiler.record_function(f"launch {self.fn.__name__}"):
            return run(self, *args, **kwargs)
    InterpretedFunction.run = counted


CALLS = (("plain", {}), ("scalar top-k + top-p", dict(top_k=50, top_p=0.9)),
         ("per-row top-k + top-p", dict(top_k="rows", top_p=0.9)),
         ("top-p alone", dict(top_p=0.9)), ("min-p alone", dict(min_p=0.1)))


def main(B=64, n=16032, W=8):
    _launches_as_one_operation()
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=0,
                                world_size=1)
        x = torch.randn(B, n)
        for backend in ("reference", "auto"):
            for name, params in CALLS:
                if params.get("top_k") == "rows":
                    params = dict(params, top_k=torch.full((B,), 50))
                kw = dict(vocab_start=n, vocab_size=W * n, seed=1, backend=backend,
                          validate=False, **params)
                fsd.sample(x, **kw)                      # compiles, warms up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fsd.sample(x, **kw)
                top = [e for e in prof.events() if e.cpu_parent is None]
                launches = sum(e.name.startswith("launch ") for e in top)
                print(f"backend {backend}, {name}: {len(top)} operations "
                      f"({launches} kernel launches)")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
