"""What the kernel's sm_90 machine code costs, read without a GPU.

Compiles each specialisation a real call uses (``compile_check.compile_call``: Triton's own
binder, so 16-byte alignment and divisibility are what a launch gets; the launch's own
``num_warps`` and block sizes) for sm_90, and reads:

- from ``ptxas -v`` (Triton's flags): registers, stack frame, spill stores and loads;
- from the SASS (``nvdisasm`` shipped with Triton, with line info): every loop (a backward
  branch) whose instructions come from a streaming loop of the kernel, marked in the
  source by ``# stream: <name>`` on its ``for`` line.  Per loop: the body's
  warp-instructions, instructions per element (``body x num_warps x 32 / elements per
  iteration``), and in the body the global loads, local-memory traffic (LDL/STL), atomics,
  barriers, MUFU and float64 instructions.  Instructions whose source lies inside an
  ``if`` marked ``# rare: <why>`` (a branch a typical row does not take there), and code
  from outside the stream's function that the compiler merged into its loop, are counted
  apart (the ``apart`` column);
- a roofline estimate per call (``estimate``), next to the one-read HBM floor.

    python scripts/sass_report.py                 # every specialisation, markdown tables
    python scripts/sass_report.py --check         # exit 1 on spills, > 128 registers or a
                                                  # streaming loop over its budget
    python scripts/sass_report.py --only plain    # specialisations whose name contains it
    python scripts/sass_report.py --quick --check # CI: the widest loops, the most registers
"""
import argparse
import ast
import concurrent.futures
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import compile_check  # noqa: E402  (sets up the compiled, not interpreted, kernel)

import torch  # noqa: E402

from fused_sampler import _args  # noqa: E402
from fused_sampler.kernels import sampler  # noqa: E402

V_REPORT = 128256
SHARD_START = 16032          # a shard's first token (V / 8): a multiple of 16, as is usual
MAX_REGISTERS = 128          # a 16-warp program fits half an SM's register file
# Instructions per element a streaming loop may issue while HBM delivers the element: an
# H200 issues 28 per fp32 logit (14 per bf16 / fp16 logit); an H100 40 (20).  --check
# holds every loop, of every dtype, to the fp32 H200 figure (the table marks the loops
# that are issue-bound for their dtype).  The plain draw (no filter, no log-probs), the
# commonest call, is held to 24 in every dtype.
BUDGET_STREAM = 28
BUDGET_PLAIN = 24


@dataclasses.dataclass(frozen=True)
class Spec:
    """One specialisation: a call's parameters, dtype and mode, and the streaming loops a
    typical row of it runs, in order (what the estimate charges)."""
    name: str
    params: dict
    dtype: torch.dtype = torch.float32
    probs: bool = False
    logprobs: bool = False
    typical: tuple = ("first",)
    split: tuple = ()         # rows split over programs: (chunks, block, launch phase)
    shard: bool = False       # a vocabulary shard's chunk summaries (fs.distributed)
    candidates: bool = False  # a shard's summary for a scalar top-k (fs.distributed)
    combine: int = 0          # ... or the combine of W ranks' such summaries
    level: bool = False       # a radix level of a shard (the other filtered calls)
    kept: bool = False        # a shard's race over the kept tokens (those calls' last step)
    budget: int = 0           # --check's budget for its loops, where not BUDGET_STREAM


_T07 = dict(temperature=0.7)
_TWO = ("first", "collect")
# a top-k of at most lane_k: pass 1 without the histogram, no search (sampler._lane_row)
_LANE = ("first (lane)", "collect")
SPECS = (
    Spec("plain fp32", {}, typical=("race",)),
    Spec("plain bf16", {}, torch.bfloat16, typical=("race",)),
    Spec("plain+logprobs fp32", {}, logprobs=True, typical=("race",)),
    Spec("plain+logprobs bf16", {}, torch.bfloat16, logprobs=True, typical=("race",)),
    Spec("greedy mix fp32", dict(temperature="mix"), typical=("race",)),
    Spec("min_p fp32", dict(min_p=0.05), typical=_TWO),
    Spec("top_k fp32", dict(top_k=50), typical=_LANE),
    Spec("top_p fp32", dict(top_p=0.95), typical=("first", "bin masses", "collect")),
    Spec("top_k_top_p fp32", dict(_T07, top_k=50, top_p=0.9), typical=_LANE),
    Spec("top_k_top_p bf16", dict(_T07, top_k=50, top_p=0.9), torch.bfloat16, typical=_LANE),
    Spec("top_k_top_p joint fp32", dict(_T07, top_k=50, top_p=0.9, order="joint"),
         typical=_LANE),
    Spec("all filters+logprobs fp32", dict(_T07, top_k=50, top_p=0.9, min_p=0.02),
         logprobs=True, typical=_LANE),
    Spec("filtered_probs fp32", dict(_T07, top_k=50, top_p=0.9), probs=True,
         typical=("first", "collect", "write")),
    # small batches (issue 11): a row's chunks over many programs, as split_plan cuts a
    # B = 1 row of V_REPORT on 132 SMs
    Spec("split plain bf16", {}, torch.bfloat16, typical=("race",), split=(126, 1024, 1)),
    Spec("split plain+logprobs fp32", {}, logprobs=True, typical=("race",),
         split=(126, 1024, 1)),
    Spec("split top_k_top_p fp32, launch 1", dict(_T07, top_k=50, top_p=0.9),
         typical=("first (lane)",), split=(32, 4096, 1)),
    Spec("split top_k_top_p fp32, collect", dict(_T07, top_k=50, top_p=0.9),
         typical=("collect",), split=(32, 4096, 3)),
    Spec("split top_p fp32, launch 1", dict(top_p=0.95), typical=("first",),
         split=(32, 4096, 1)),
    Spec("split top_p fp32, bin masses", dict(top_p=0.95), typical=("bin masses",),
         split=(32, 4096, 2)),
    Spec("split top_p fp32, collect", dict(top_p=0.95), typical=("collect",),
         split=(32, 4096, 3)),
    Spec("split all filters+logprobs fp32, launch 1",
         dict(_T07, top_k=50, top_p=0.9, min_p=0.02), logprobs=True,
         typical=("first (lane)",),
         split=(32, 4096, 1)),
    # tensor parallel (issue 13): a plain shard's chunk summaries (_shard_kernel)
    Spec("shard plain bf16", {}, torch.bfloat16, typical=("race",), shard=True),
    Spec("shard plain+logprobs fp32", {}, logprobs=True, typical=("race",), shard=True),
    # ... and the other filtered calls' race over the kept tokens (min-p's bound too)
    Spec("shard kept race bf16", dict(_T07, top_p=0.9, min_p=0.05), torch.bfloat16,
         typical=("race",), shard=True, kept=True),
    # and a scalar top-k's candidates (_candidates_kernel, after torch.topk)
    Spec("shard top_k_top_p bf16, candidates", dict(_T07, top_k=50, top_p=0.9),
         torch.bfloat16, typical=("candidates' shard",), candidates=True),
    Spec("shard top_k_top_p, combine of 8 ranks' candidates",
         dict(_T07, top_k=50, top_p=0.9), typical=(), combine=8),
    # and one radix level of the other filtered calls, counts and masses (_radix_level_kernel):
    # a read per collective of ~10 us, so held to a looser budget (docs/design.md, "Tensor
    # parallel": ~2 us at B = 64 on an H100, issue-bound)
    Spec("shard level bf16", dict(_T07, top_p=0.9), torch.bfloat16, typical=("radix level",),
         level=True, budget=64),
)
# --quick (CI): the plain loop (held to its own budget) and at its widest, every filtered
# loop with the most live state, and the write pass; split rows' plain race and pass 1
QUICK = ("plain bf16", "plain+logprobs bf16", "all filters+logprobs fp32",
         "filtered_probs fp32", "split plain bf16",
         "split all filters+logprobs fp32, launch 1")


def call_for(spec: Spec, B: int = 64):
    """The checked call of a specialisation (values do not matter: the code does)."""
    x = torch.zeros(B, V_REPORT, dtype=spec.dtype)
    p = dict(spec.params)
    t = p.pop("temperature", 1.0)
    if t == "mix":
        t = torch.tensor([0.0, 1.0] * (B // 2))
    return _args.check(x, t, p.get("top_k"), p.get("top_p"), p.get("min_p"),
                       p.get("order", "top_k_first"), seed=torch.arange(B), offset=0,
                       validate=False)


# ----------------------------------------------------------------------------- SASS

_LINE = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


@dataclasses.dataclass
class Instr:
    addr: int
    text: str
    lines: tuple          # kernel-file source lines of its inlining frames, innermost first

    @property
    def op(self):
        t = re.sub(r"^@!?U?P\w+\s+", "", self.text)
        return t.split()[0] if t else ""


def _nvdisasm(cubin: bytes, *flags):
    tool = os.path.join(os.path.dirname(compile_check.triton.__file__), "backends", "nvidia",
                        "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-c", *flags, f.name], capture_output=True, text=True,
                              check=True).stdout


_LIVE = re.compile(r"/\*([0-9a-f]{4,})\*/.*//\s*\|\s*(\d+)\s*\|")


def live_registers(cubin: bytes):
    """{address: general registers live there} (nvdisasm's life ranges; it refuses a
    kernel at 255 registers: then {})."""
    try:
        text = _nvdisasm(cubin, "-lrm", "count")
    except subprocess.CalledProcessError:
        return {}
    return {int(m.group(1), 16): int(m.group(2))
            for m in map(_LIVE.search, text.splitlines()) if m}


def disassemble(cubin: bytes):
    """[Instr] and {label: address} of a cubin, with each instruction's source lines."""
    text = _nvdisasm(cubin, "-gi")
    kernel_file = os.path.realpath(sampler.__file__)
    instrs, labels, chain, chain_done = [], {}, [], True
    for raw in text.splitlines():
        m = _LINE.search(raw)
        if m:
            if chain_done:
                chain, chain_done = [], False
            for file, line in ((m.group(1), m.group(2)), (m.group(3), m.group(4))):
                if file and os.path.realpath(file) == kernel_file and int(line) not in chain:
                    chain.append(int(line))
            continue
        m = _LABEL.match(raw.strip())
        if m:
            labels[m.group(1)] = None
            continue
        m = _INSTR.search(raw)
        if m:
            chain_done = True
            ins = Instr(int(m.group(1), 16), m.group(2), tuple(chain))
            for lab, addr in labels.items():
                if addr is None:
                    labels[lab] = ins.addr
            instrs.append(ins)
    return instrs, labels


def _marked_spans(marker):
    """{name: (first, last) line} of the statements whose first line carries ``# marker:``
    (a stream: its ``for`` line and body, where the loop's control lies too; a rare ``if``:
    its body only, the condition runs on every row).  A stream marker may name its tile
    when it is not BLOCK: ``# stream: refine (tile RARE_BLOCK)``; see :func:`stream_tiles`."""
    path = sampler.__file__
    src = open(path).read()
    lines = src.splitlines()
    spans = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.For, ast.If, ast.While)):
            m = re.search(rf"#\s*{marker}:\s*(.*)$", lines[node.lineno - 1])
            if m:
                name = m.group(1).strip() or f"line {node.lineno}"
                first = node.lineno if marker == "stream" else node.body[0].lineno
                spans[f"{name} (line {node.lineno})" if marker == "rare" else name] = \
                    (first, node.body[-1].end_lineno)
    return spans


def _stream_functions():
    """{stream name: (first, last) line of the function that holds its loop}."""
    src = open(sampler.__file__).read()
    lines = src.splitlines()
    out = {}
    for fn in ast.walk(ast.parse(src)):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                m = isinstance(node, ast.For) and \
                    re.search(r"#\s*stream:\s*(.*)$", lines[node.lineno - 1])
                if m:
                    name = re.sub(r"\s*\(tile \w+\)$", "", m.group(1).strip())
                    out[name] = (fn.lineno, fn.end_lineno)
    return out


def stream_tiles():
    """{stream name: constexpr naming its tile width} (BLOCK unless the marker says)."""
    out = {}
    for name in _marked_spans("stream"):
        m = re.match(r"(.*?)\s*\(tile (\w+)\)$", name)
        out[m.group(1) if m else name] = m.group(2) if m else "BLOCK"
    return out


def loops(instrs, labels):
    """[(start, end)] address ranges of the loops: a backward branch and its target."""
    found = {}
    for ins in instrs:
        if ins.op in ("BRA", "JMP"):
            m = _TARGET.search(ins.text)
            if m and labels.get(m.group(1)) is not None and labels[m.group(1)] <= ins.addr:
                start = labels[m.group(1)]
                found[start] = max(found.get(start, 0), ins.addr)
    return sorted(found.items())


def _kind(op):
    if op.startswith("LDG"):
        return "ldg"
    if op.startswith(("LDL", "STL")):
        return "local"
    if op.startswith(("ATOM", "RED")):
        return "atomic"
    if op.startswith(("BAR", "WARPSYNC")):
        return "barrier"
    if op.startswith("MUFU"):
        return "mufu"
    if op.startswith(("DADD", "DMUL", "DFMA", "DSETP", "DMNMX")) or ".F64" in op:
        return "fp64"
    return None


@dataclasses.dataclass
class Loop:
    stream: str
    start: int
    end: int
    body: int            # warp-instructions, rare bodies excluded
    rare: int            # warp-instructions inside `# rare:` ifs
    counts: dict
    per_element: float = 0.0


def stream_loops(instrs, labels, constexprs, warps):
    """The SASS loops of the marked streaming loops, with their costs (elements per
    iteration: the stream's tile, a constexpr of the launch)."""
    streams = {re.sub(r"\s*\(tile \w+\)$", "", k): v for k, v in _marked_spans("stream").items()}
    tiles = stream_tiles()
    rare = _marked_spans("rare")
    functions = _stream_functions()
    out = []
    spans = loops(instrs, labels)
    for start, end in spans:
        body = [i for i in instrs if start <= i.addr <= end]
        owners = {}
        for i in body:
            for name, (a, b) in streams.items():
                if any(a <= ln <= b for ln in i.lines):
                    owners[name] = owners.get(name, 0) + 1
        if not owners:
            continue
        name, n = max(owners.items(), key=lambda kv: kv[1])
        # Triton 3.9's line info names every inlining frame, so most of a stream's body
        # lies in its marked lines; 3.6's names only the innermost frame or two, so there a
        # loop that encloses no other and touches one stream's lines is that stream
        innermost = not any(start <= s2 and e2 <= end and (s2, e2) != (start, end)
                            for s2, e2 in spans)
        full_frames = n >= len(body) / 2
        if not full_frames and not (innermost and len(owners) == 1):
            continue                  # an enclosing loop (the row loop), not a stream
        # Apart from the stream's cost: the bodies of rare ifs, and (where the frames tell)
        # code from outside the stream's function that the compiler merged into its loop
        # (the proof's exact keys of a few lanes can share the exact race's loop)
        a, b = functions[name]
        apart = [any(lo <= ln <= hi for lo, hi in rare.values() for ln in i.lines) or
                 (full_frames and not any(a <= ln <= b for ln in i.lines)) for i in body]
        counts = {}
        for i, r in zip(body, apart):
            k = _kind(i.op)
            if k and not r:
                counts[k] = counts.get(k, 0) + 1
        common = sum(1 for r in apart if not r)
        out.append(Loop(name, start, end, common, len(body) - common, counts,
                        common * warps * 32 / constexprs[tiles[name]]))
    return out


# ----------------------------------------------------------------------------- ptxas

def ptxas_numbers(log):
    regs = re.search(r"Used (\d+) registers", log)
    stack = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      log)
    return dict(registers=int(regs.group(1)) if regs else None,
                stack=int(stack.group(1)) if stack else 0,
                spill_stores=int(stack.group(2)) if stack else 0,
                spill_loads=int(stack.group(3)) if stack else 0)


# ----------------------------------------------------------------------------- model

@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    clock_hz: float
    hbm_bytes_s: float
    latency_s: float = 0.7e-6     # one round trip to HBM, assumed (no GPU measured yet)

    @property
    def issue_per_sm(self):       # lane-instructions per second: 4 schedulers x 32 lanes
        return 4 * 32 * self.clock_hz


H100 = Gpu("H100 SXM", 132, 1.755e9, 3.0e12)
H200 = Gpu("H200", 132, 1.755e9, 4.3e12)


def estimate(gpu, B, V, itemsize, passes, registers, warps, block, launch_programs):
    """Seconds for one call, a roofline of three bounds (the largest wins):

    - HBM: every pass reads the row once, ``B * passes * V * itemsize`` bytes;
    - issue: the busiest SM's rows, ``ceil(B / SMs) * sum(instructions per element) * V``
      lane-instructions at 4 x 32 per clock;
    - chain: a program runs its rows one after another, and each tile iteration waits one
      memory round trip (the loop's loads are issued at its top, and Triton does not
      pipeline them) plus its own issue time, shared with the programs resident beside it.

    ``passes`` is [instructions per element] of the passes a typical row makes.
    """
    occupancy = max(1, min(65536 // (max(registers, 1) * 32 * warps), 64 // warps))
    hbm = B * len(passes) * V * itemsize / gpu.hbm_bytes_s
    issue = math.ceil(B / gpu.sms) * sum(passes) * V / gpu.issue_per_sm
    programs = min(B, launch_programs)
    rows_per_program = math.ceil(B / programs)
    programs_per_sm = math.ceil(programs / gpu.sms)
    resident = min(programs_per_sm, occupancy)
    waves = math.ceil(programs_per_sm / resident)
    iters = math.ceil(V / block)
    tile = sum(gpu.latency_s + block * ipe / (gpu.issue_per_sm / resident) for ipe in passes)
    chain = waves * rows_per_program * iters * tile
    return max(hbm, issue, chain), dict(hbm=hbm, issue=issue, chain=chain)


# Split rows (small batches).  Assumed, until a GPU measures them: a kernel launch in a
# replayed CUDA graph, the memset of the counters, and the dependent memory round trips of
# the last program of a row after its chunk (its arrival atomic; reading the chunks'
# summaries; plain rows: the winners' exact keys and the results; launch 1 of a filtered
# row: the histogram, the search's scans and its stash; top-p alone's bin masses: the
# search; the collect, for top-k + top-p: the stash 1, the scratch's count and Z 1, the
# scratch's entries 1 (held in registers when it has at most CHUNK, so that its masses,
# top-k's histogram levels and the race's cheap keys read no memory), top-p's levels at
# about three, each with atomics read back 2, the race's exact keys 1, the token's
# logit 1: 11; 18 while each of those loops read the scratch again; launch 1 of a top-k
# row from group maxima, no search: the chunks' summaries, the group maxima, the stash: 3;
# such a row settled in that launch (sampler._one_launch_row: each chunk collects its own
# candidates after its pass 1), the chunks' summaries 1 and the collect's 11: 12; 2 more
# where its candidates are narrowed to the top-k set first (their keys, then the move and
# the reload).  Top-p by pairs (sampler._small_top_p, a top-k of at most SMALL_TOP_P:
# the scratch then holds about k entries) reads the scratch's entries once, 1 where its
# levels took 6.)
LAUNCH_S = 2.0e-6
MEMSET_S = 1.0e-6
TAIL_TRIPS = {"race": 4, "first": 8, "first (lane)": 3, "bin masses": 8, "collect": 11,
              "collect, top-p by pairs": 6, "one launch": 12, "one launch, narrowed": 14,
              "one launch, top-p by pairs": 7, "one launch, narrowed, top-p by pairs": 9}


def estimate_split(gpu, B, V, itemsize, launches, registers, warps, block, chunks):
    """Seconds for one call whose rows are split into ``chunks`` chunks of whole tiles
    (``split_plan``): per launch, the programs' waves, each streaming its chunk's tiles
    once per pass (a round trip plus issue time per tile, as in ``estimate``; a second
    pass over a chunk just read is charged as if from HBM), then the last program's round
    trips (TAIL_TRIPS) and the launch itself; plus the memset.  ``launches`` is
    [(TAIL_TRIPS key, [instructions per element of each pass])], one per launch.  The
    HBM floor, a read of the row per pass, bounds it too."""
    occupancy = max(1, min(65536 // (max(registers, 1) * 32 * warps), 64 // warps))
    programs = chunks * B
    resident = min(math.ceil(programs / gpu.sms), occupancy)
    waves = math.ceil(programs / (gpu.sms * resident))
    tiles = math.ceil(math.ceil(V / block) / chunks)
    t = MEMSET_S
    for tail, passes in launches:
        for ipe in passes:
            t += waves * tiles * (gpu.latency_s + block * ipe / (gpu.issue_per_sm / resident))
        t += LAUNCH_S + (1 + TAIL_TRIPS[tail]) * gpu.latency_s
    hbm = B * sum(len(p) for _, p in launches) * V * itemsize / gpu.hbm_bytes_s
    return max(t, hbm)


# ----------------------------------------------------------------------------- report

def analyse(spec: Spec, arch=90):
    a = call_for(spec, 1 if spec.split else 64)
    launch = dict(return_logprobs=spec.logprobs)
    if spec.split:
        chunks, block, phase = spec.split
        launch.update(chunks=chunks, block=block, phase=phase)
    if spec.shard:
        launch.update(shard=SHARD_START, kept=spec.kept)
    if spec.candidates:
        launch.update(candidates=SHARD_START)
    if spec.combine:
        launch.update(combine_candidates=spec.combine)
    if spec.level:
        launch.update(level=True)
    kernel, log = compile_check.compile_call(a, spec.probs, arch, ptxas_log=True, **launch)
    if spec.shard:
        _, _, kwargs, _ = sampler.shard_kernel_args(a, SHARD_START, V_REPORT, 8,
                                                    return_logprobs=spec.logprobs)
    elif spec.combine:
        kwargs = {"num_warps": 4, "BLOCK": 1}       # one row's candidates, no stream
    elif spec.level:
        kwargs = {"num_warps": 4, "BLOCK": sampler.LEVEL_BLOCK}
    elif spec.candidates:
        _, _, kwargs, _ = sampler.candidate_kernel_args(
            a, torch.zeros(a.batch, a.top_k, dtype=a.logits.dtype),
            torch.zeros(a.batch, a.top_k, dtype=torch.int64), SHARD_START, V_REPORT,
            a.top_k)
    elif spec.split:
        _, _, kwargs, _ = sampler.split_kernel_args(a, **launch)
    else:
        _, _, kwargs, _ = sampler.kernel_args(a, spec.probs, **launch)
    warps, block = kwargs["num_warps"], kwargs["BLOCK"]
    instrs, labels = disassemble(kernel.asm["cubin"])
    found = stream_loops(instrs, labels, kwargs, warps)
    live = live_registers(kernel.asm["cubin"])
    peak = max(live.values()) if live else 0
    peak_lines = sorted({i.lines[0] for i in instrs if live.get(i.addr) == peak and i.lines})
    return dict(spec=spec.name, dtype=str(spec.dtype).replace("torch.", ""), warps=warps,
                block=block, shared=kernel.metadata.shared, instructions=len(instrs),
                peak_live=peak, peak_lines=peak_lines[:12],
                **ptxas_numbers(log), loops=[dataclasses.asdict(l) for l in found],
                typical=list(spec.typical), itemsize=spec.dtype.itemsize,
                logprobs=spec.logprobs, split=list(spec.split),
                shard=spec.shard or spec.candidates or bool(spec.combine) or spec.level,
                budget=spec.budget)


def hbm_budget(gpu, itemsize):
    """Lane-instructions per element the GPU issues while HBM delivers one element
    (H200: 27.6 per fp32 logit; H100: 39.5)."""
    return gpu.issue_per_sm * gpu.sms * itemsize / gpu.hbm_bytes_s


def problems(result):
    out = []
    if result["registers"] is None or result["registers"] > MAX_REGISTERS:
        out.append(f"{result['registers']} registers (limit {MAX_REGISTERS})")
    if result["spill_stores"] or result["spill_loads"] or result["stack"]:
        out.append(f"spills: {result['spill_stores']} B stored, {result['spill_loads']} B "
                   f"loaded, {result['stack']} B stack")
    plain = result["spec"].startswith(("plain ", "split plain ", "shard plain "))
    for loop in result["loops"]:
        budget = BUDGET_PLAIN if plain and loop["stream"] == "race" else \
            result["budget"] or BUDGET_STREAM
        if loop["per_element"] > budget:
            out.append(f"loop '{loop['stream']}' at {loop['per_element']:.1f} instructions "
                       f"per element (budget {budget})")
    return out


def per_pass(result):
    """{stream name: instructions per element} (the costliest SASS copy of each; and
    "first (lane)", the cheapest counted copy of pass 1: the one without the histogram
    that a top-k row from group maxima runs, sampler._lane_row)."""
    best = {}
    for loop in result["loops"]:
        best[loop["stream"]] = max(best.get(loop["stream"], 0), loop["per_element"])
        if loop["stream"] == "first" and loop["per_element"] > 0:
            best["first (lane)"] = min(best.get("first (lane)", math.inf),
                                       loop["per_element"])
    return best


def split_table(results, gpu, batches=(1, 8, 64)):
    """Rows of a markdown table: each split call (its launches: "<call>, launch 1", then
    "<call>, bin masses" and "<call>, collect" where reported) against one program per
    row (``estimate`` of "<call>", plus one launch and the same serial round trips after
    each pass, less reading the chunks' summaries), microseconds."""
    by_name = {r["spec"]: r for r in results}
    out = []
    for r in results:
        if not r["split"] or r["split"][2] != 1:
            continue
        name = r["spec"].replace("split ", "").replace(", launch 1", "")
        whole = by_name.get(name)
        filtered = "launch 1" in r["spec"]
        later = [by_name.get(r["spec"].replace("launch 1", what))
                 for what in ("bin masses", "collect") if filtered]
        later = [x for x in later if x is not None]
        if whole is None or (filtered and not later):
            continue
        spec = next(s for s in SPECS if s.name == r["spec"])
        # a top-k of at most SMALL_TOP_P with top-p: top-p by pairs after the collect
        pairs = "top_p" in spec.params and \
            spec.params.get("top_k", math.inf) <= sampler.SMALL_TOP_P.value

        def tail(stream):
            return f"{stream}, top-p by pairs" if pairs and stream == "collect" else stream
        launches = [(tail(x["typical"][0]), [per_pass(x)[x["typical"][0]]])
                    for x in [r] + later]
        registers = max(x["registers"] for x in [r] + later)
        passes = [per_pass(whole)[p] for p in whole["typical"]]
        cells = []
        for B in batches:
            one, _ = estimate(gpu, B, V_REPORT, whole["itemsize"], passes,
                              whole["registers"], whole["warps"], whole["block"], 2 * gpu.sms)
            one += LAUNCH_S + sum(TAIL_TRIPS[tail(p)] - 1 for p in whole["typical"]) * \
                gpu.latency_s
            plan = sampler.split_plan(B, V_REPORT, torch.device("cuda"), filtered,
                                      programs=gpu.sms)
            if plan is None:
                cells.append(f"{one * 1e6:.0f} | (no split)")
                continue
            chunks, block = plan
            called = launches
            if filtered:
                a = call_for(spec, 1)
                kwargs = sampler.split_kernel_args(a, chunks, block=block)[2]
                if not sampler.collect_launch(a, chunks, kwargs):  # settled in launch 1
                    # the chunks' candidates, about k each: narrowed as the kernel does
                    narrowed = a.top_k * chunks > kwargs["CHUNK"] or \
                        (pairs and a.top_k * chunks > sampler.SMALL_TOP_P.value)
                    called = [("one launch" + ", narrowed" * narrowed +
                               ", top-p by pairs" * pairs,
                               [per_pass(r)[p] for p in ("first (lane)", "collect")])]
            t = estimate_split(gpu, B, V_REPORT, r["itemsize"], called,
                               registers if called is launches else r["registers"],
                               max(4, min(16, block // 256)), block, chunks)
            cells.append(f"{one * 1e6:.0f} | {t * 1e6:.1f} ({chunks} x {block}"
                         f"{', 1 launch' if filtered and called is not launches else ''})")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def print_tables(results):
    print("| specialisation | regs | spill st/ld B | stack B | smem B | loop | body | "
          "instr/elem | H200 | apart | LDG | LDL/STL | atom | bar | MUFU | fp64 |")
    print("|" + " --- |" * 17)
    for r in results:
        head = (f"| {r['spec']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | "
                f"{r['stack']} | {r['shared']} |")
        if not r["loops"]:
            print(head + " (no streaming loop found) |" + " |" * 11)
        for i, l in enumerate(r["loops"]):
            c = l["counts"]
            lead = head if i == 0 else "| | | | | |"
            ratio = l["per_element"] / hbm_budget(H200, r["itemsize"])
            bound = "HBM" if ratio <= 1 else f"issue x{ratio:.2f}"
            print(f"{lead} {l['stream']} | {l['body']} | {l['per_element']:.1f} | {bound} | "
                  f"{l['rare']} | "
                  f"{c.get('ldg', 0)} | {c.get('local', 0)} | {c.get('atomic', 0)} | "
                  f"{c.get('barrier', 0)} | {c.get('mufu', 0)} | {c.get('fp64', 0)} |")
    print()
    for gpu in (H100, H200):
        print(f"Estimated call time on an {gpu.name} (V = {V_REPORT}; HBM "
              f"{gpu.hbm_bytes_s / 1e12:.1f} TB/s, {gpu.sms} SMs at {gpu.clock_hz / 1e9:.2f} GHz, "
              f"{gpu.latency_s * 1e6:.1f} us per memory round trip), microseconds, with the "
              f"one-read HBM floor and the bound that sets it:\n")
        print("| specialisation | reads | " + " | ".join(
            f"B={B} est. | B={B} floor" for B in (1, 64, 1024)) + " |")
        print("|" + " --- |" * 8)
        for r in results:
            ipe = per_pass(r)
            if r["split"] or r.get("shard") or not all(p in ipe for p in r["typical"]):
                continue
            passes = [ipe[p] for p in r["typical"]]
            cells = []
            for B in (1, 64, 1024):
                t, parts = estimate(gpu, B, V_REPORT, r["itemsize"], passes, r["registers"],
                                    r["warps"], r["block"], 4 * gpu.sms)
                floor = B * V_REPORT * r["itemsize"] / gpu.hbm_bytes_s
                bound = max(parts, key=parts.get)
                cells.append(f"{t * 1e6:.0f} ({bound}) | {floor * 1e6:.1f}")
            print(f"| {r['spec']} | {len(passes)} | " + " | ".join(cells) + " |")
        print()
        rows = split_table(results, gpu)
        if rows:
            print(f"Small batches on an {gpu.name}: one program per row against rows split "
                  f"over programs (both with the same serial round trips after each pass; "
                  f"chunks x tile from split_plan; launches "
                  f"{LAUNCH_S * 1e6:.0f} us, memset {MEMSET_S * 1e6:.0f} us, tail round trips "
                  f"{TAIL_TRIPS}: assumed), microseconds:\n")
            print("| call | " + " | ".join(f"B={B} per row | B={B} split" for B in (1, 8, 64))
                  + " |")
            print("|" + " --- |" * 7)
            print("\n".join(rows))
            print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--only", default="", help="specialisations whose name contains this")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--check", action="store_true", help="exit 1 on any problem")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    specs = [s for s in SPECS if args.only in s.name and (not args.quick or s.name in QUICK)]
    print(f"triton {compile_check.triton.__version__}, sm_{args.arch}, V = {V_REPORT}\n")
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(analyse, specs, [args.arch] * len(specs)))
    print_tables(results)
    bad = {r["spec"]: problems(r) for r in results if problems(r)}
    for name, what in bad.items():
        print(f"PROBLEM {name}: " + "; ".join(what))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
