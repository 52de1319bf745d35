"""The kernel compiles for a GPU, checked on any machine.

The rest of the suite runs the kernel in Triton's interpreter, which accepts code the
compiler rejects; ``scripts/compile_check.py`` compiles it through Triton's frontend,
LLVM and ptxas to an sm_90 cubin without a GPU.  It runs in its own process because
TRITON_INTERPRET (set for this one) is read when the kernel module is imported.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_kernel_compiles_to_a_hopper_cubin():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_check.py"), "--quick"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    assert run.stdout.count("  ok  ") == 2, run.stdout
