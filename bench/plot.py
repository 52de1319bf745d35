"""``python -m bench.plot RESULTS.json``: the plot and the README table of a results file.

Writes ``<out-dir>/<stem>.png``: one subplot per (case, dtype, V), time against batch size
on log-log axes, one line per implementation and the one-read floor
``B * V * itemsize / copy_bandwidth`` as a dashed black line.  Then writes (or replaces)
the device's table in ``bench/README.md`` between the marker comments
``<!-- bench-device:<slug>:begin -->`` and ``<!-- bench-device:<slug>:end -->``, inside
the ``<!-- bench-results:begin -->`` / ``<!-- bench-results:end -->`` section, with the
notes of ``<stem>.notes.txt`` (why an implementation did not run) under it.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from . import workloads as wl
from .run import BENCH_DIR, check_schema, notes_path, slugify

RESULTS_BEGIN = "<!-- bench-results:begin -->"
RESULTS_END = "<!-- bench-results:end -->"
PLACEHOLDER = ("**No GPU results yet.** No numbers are shown until a GPU run has produced "
               "`bench/results/<gpu>.json`; none are ever typed in by hand.")
STYLE = {
    "fused_sampler": ("tab:red", "o"),
    "fused_sampler_per_row": ("tab:orange", "o"),
    "flashinfer_top_k_first": ("tab:blue", "s"),
    "flashinfer_joint": ("tab:cyan", "D"),
    "flashinfer_probs": ("tab:purple", "v"),
    "flashinfer_logits": ("tab:olive", "P"),
    "torch_reference": ("tab:gray", "^"),
    "torch_compile_reference": ("tab:green", "x"),
}


def load(path) -> dict:
    """A results file, checked against the schema."""
    return check_schema(json.loads(Path(path).read_text()))


def load_notes(path) -> list:
    """The notes written next to a results file (empty when there are none)."""
    p = notes_path(Path(path))
    return [n for n in p.read_text().splitlines() if n.strip()] if p.exists() else []


def _ordered(values, order):
    return [v for v in order if v in values] + sorted(set(values) - set(order))


def plot(results: dict, out_png: Path) -> Path:
    """Draw the results into ``out_png`` (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    rows = results["rows"]
    if not rows:
        raise ValueError("plot: the results file has no rows")
    bw = results["copy_bandwidth_GBps"]
    cases = _ordered({r["case"] for r in rows}, wl.CASES)
    panels = [(d, v) for d in _ordered({r["dtype"] for r in rows}, wl.DTYPES)
              for v in sorted({r["V"] for r in rows if r["dtype"] == d})]
    impls = _ordered({r["impl"] for r in rows}, wl.IMPLS)
    fig, axes = plt.subplots(len(cases), len(panels), squeeze=False, sharex=True,
                             figsize=(3.6 * len(panels), 2.8 * len(cases)))
    for i, case in enumerate(cases):
        for j, (dtype, V) in enumerate(panels):
            ax = axes[i][j]
            here = [r for r in rows if (r["case"], r["dtype"], r["V"]) == (case, dtype, V)]
            for impl in impls:
                pts = sorted((r["B"], r["median_us"]) for r in here if r["impl"] == impl)
                if pts:
                    color, marker = STYLE.get(impl, (None, "."))
                    ax.plot(*zip(*pts), marker=marker, color=color, label=impl, lw=1.2, ms=4)
            bs = sorted({r["B"] for r in rows})
            if bw > 0:
                ax.plot(bs, [wl.floor_us(b, V, dtype, bw) for b in bs], "k--", lw=1,
                        label="one-read floor")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(bs, [str(b) for b in bs])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{case} | {dtype} | V={V}", fontsize=9)
            if i == len(cases) - 1:
                ax.set_xlabel("batch size B")
            if j == 0:
                ax.set_ylabel("median time (us)")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.suptitle(f"{results['device']}  (torch {results['torch']}, triton "
                 f"{results['triton']}, commit {results['commit'][:12]}, copy "
                 f"{bw:.0f} GB/s)", y=0.995, fontsize=10)
    labels.sort(key=lambda lab: lab == "one-read floor")      # the floor last
    fig.legend([handles[lab] for lab in labels], labels, loc="upper center",
               bbox_to_anchor=(0.5, 0.975), ncol=min(len(labels), 8), fontsize=9,
               frameon=False)
    # fixed margins: tight_layout would draw the whole figure once more
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.05, top=0.91, wspace=0.25,
                        hspace=0.35)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _us(value: float) -> str:
    """Microseconds for the table: two decimals below 10 us, one above."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(results: dict, notes=(), png_name: str | None = None) -> str:
    """The markdown block of one device: header line, table, notes."""
    rows = results["rows"]
    bw = results["copy_bandwidth_GBps"]
    impls = _ordered({r["impl"] for r in rows}, wl.IMPLS)
    t = {(r["dtype"], r["V"], r["B"], r["case"], r["impl"]): r["median_us"] for r in rows}
    points = sorted({k[:4] for k in t}, key=lambda k: (list(wl.DTYPES).index(k[0])
                    if k[0] in wl.DTYPES else 9, k[1], k[2],
                    list(wl.CASES).index(k[3]) if k[3] in wl.CASES else 9))
    lines = [f"### {results['device']}", "",
             f"torch {results['torch']}, triton {results['triton']}, commit "
             f"`{results['commit']}`, device-to-device copy {bw:.1f} GB/s (read + write). "
             "Median microseconds; `floor` is the one-read floor B·V·itemsize / bandwidth; "
             "`-` means not measured (see the notes)."
             + (f" Plot: `bench/results/{png_name}`." if png_name else ""), "",
             "| dtype | V | B | case | floor | " + " | ".join(impls) + " |",
             "|" + "---|" * (5 + len(impls))]
    for dtype, V, B, case in points:
        cells = [_us(t[(dtype, V, B, case, i)]) if (dtype, V, B, case, i) in t else "-"
                 for i in impls]
        floor = _us(wl.floor_us(B, V, dtype, bw)) if bw > 0 else "-"
        lines.append(f"| {dtype} | {V} | {B} | {case} | {floor} | " + " | ".join(cells)
                     + " |")
    if notes:
        lines += ["", "Notes from the run:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def update_readme(readme: Path, slug: str, block: str) -> None:
    """Put ``block`` into the device's marked place in ``readme``, replacing the old one
    (or the "No GPU results yet" placeholder)."""
    text = readme.read_text()
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        raise ValueError(f"{readme}: the markers {RESULTS_BEGIN} / {RESULTS_END} are missing")
    head, rest = text.split(RESULTS_BEGIN, 1)
    body, tail = rest.split(RESULTS_END, 1)
    pattern = re.compile(r"<!-- bench-device:([a-z0-9-]+):begin -->\n(.*?)\n"
                         r"<!-- bench-device:\1:end -->", re.S)
    blocks = {m.group(1): m.group(2) for m in pattern.finditer(body)}
    blocks[slug] = block
    body = "\n\n".join(f"<!-- bench-device:{s}:begin -->\n{b}\n<!-- bench-device:{s}:end -->"
                       for s, b in sorted(blocks.items()))
    readme.write_text(f"{head}{RESULTS_BEGIN}\n{body}\n{RESULTS_END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, help="a results JSON written by python -m bench")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the png goes (default: next to the results file)")
    p.add_argument("--readme", type=Path, default=BENCH_DIR / "README.md",
                   help="README whose marked table to update (default: bench/README.md)")
    p.add_argument("--no-readme", action="store_true", help="do not touch any README")
    args = p.parse_args(argv)

    results = load(args.results)
    out_png = (args.out_dir or args.results.parent) / f"{args.results.stem}.png"
    try:
        print(f"plot: {plot(results, out_png)}")
        png_name = out_png.name
    except ImportError as exc:
        print(f"plot: skipped, matplotlib is not importable ({exc}); the table is still "
              "written")
        png_name = None
    if not args.no_readme:
        update_readme(args.readme, slugify(results["device"]),
                      table(results, load_notes(args.results), png_name))
        print(f"table: {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
