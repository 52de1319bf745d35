"""python -m fused_sampler {demo, check, generate}."""
import argparse
import sys


def _kernel_everywhere():
    """Run the Triton kernel even without a GPU: in Triton's interpreter on CPU tensors
    (set before anything imports the kernel; an explicit TRITON_INTERPRET=0 is kept)."""
    import os

    import warnings

    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # the interpreter evaluates both sides of tl.where in numpy; its inf/nan warnings are
    # about the discarded side
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            module="triton.runtime.interpreter")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = ("demo", "check", "generate")
    if not argv or argv[0] not in commands:
        print("usage: python -m fused_sampler {demo,check,generate} [options]\n"
              "  demo      how temperature, top-k, top-p and min-p reshape a next-token\n"
              "            distribution, with 1,000 draws beside it\n"
              "  check     the test harness on this device: kernel against the reference\n"
              "  generate  text from the bundled character-level model", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    _kernel_everywhere()
    if command == "demo":
        from .demo import main as demo
        return demo(rest)
    if command == "check":
        import torch

        from . import testing
        parser = argparse.ArgumentParser(prog="python -m fused_sampler check")
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        parser.add_argument("--backend", default="auto",
                            choices=["auto", "triton", "reference"])
        parser.add_argument("--quick", action="store_true", help="a smaller spread")
        args = parser.parse_args(rest)
        rows = testing.check(args.device, args.backend, quick=args.quick)
        return 0 if testing.print_table(rows, args.device, args.backend) else 1
    from .charlm import main as generate
    return generate(rest)


if __name__ == "__main__":
    sys.exit(main())
