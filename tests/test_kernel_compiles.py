"""The kernel compiles for a GPU, within its register and instruction budgets, checked on
any machine.

The rest of the suite runs the kernel in Triton's interpreter, which accepts code the
compiler rejects.  ``scripts/sass_report.py`` compiles the kernel through Triton's
frontend, LLVM and ptxas to sm_90 cubins without a GPU (``scripts/compile_check.py``),
reads the machine code, and with ``--check`` fails on spills, more than 128 registers, or
a streaming loop above 28 instructions per element (memory-bound on an H200 for fp32; 24
for the plain draw).
It runs in its own process because TRITON_INTERPRET (set for this one) is read when the
kernel module is imported.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_kernel_compiles_to_hopper_code_within_its_budgets():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "sass_report.py"), "--quick",
                          "--check", "--jobs", "2"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-4000:]
    # the six --quick specialisations compiled and read: registers, no spill bytes, loops
    heads = [line for line in run.stdout.splitlines()
             if re.match(r"\| [^|]+ \| \d+ \| 0/0 \| 0 \| \d+ \| \w", line)]
    assert len(heads) == 6, run.stdout


GPU_IMAGE_TRITON = "3.6.0"   # what the lent GPU machines run (docs/reliability.md)


def test_the_kernel_compiles_with_the_gpu_images_triton():
    # The GPU machines run an older Triton than CI installs, and 3.6 crashed on code 3.9
    # compiles (min-p alone's dead search code).  Its wheel goes to a folder of its own
    # (kept in .venv between runs) that shadows the installed Triton in a subprocess.
    target = Path(sys.prefix) / f"triton-{GPU_IMAGE_TRITON}"
    if not (target / "triton" / "__init__.py").exists():
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--target", str(target), f"triton=={GPU_IMAGE_TRITON}"],
                             capture_output=True, text=True, timeout=900)
        assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + env.get("PYTHONPATH", "").split(
        os.pathsep)).rstrip(os.pathsep)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_check.py"),
                          "--quick"], env=env, capture_output=True, text=True, timeout=900)
    assert f"triton {GPU_IMAGE_TRITON}" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert run.stdout.count("  ok  ") == 16, run.stdout
