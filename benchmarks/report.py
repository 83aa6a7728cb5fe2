"""The record of one invocation of ``run.py`` (``Bench``) and what it writes: the
table on stdout and in ``results.md``, the raw numbers in ``results.json``, the plot
``results.png``, and the table of ``docs/benchmarks.md`` (``--update-docs``)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import HERE, REPO

TABLE_START, TABLE_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


@dataclass
class Bench:
    """One invocation: the random seed of the frame draws (``--seed``), ``--quick``,
    the rows so far and the run information (``info``) of ``results.json``. The
    workloads record their rows through ``add``."""

    seed: int
    quick: bool
    rows: list[dict]
    info: dict

    def add(self, workload, config, unit, jm, up, note="", lower_is_better=False, jm_impl=""):
        """Records a row (in place of an earlier one of the same workload, config and
        implementation), prints it and writes the results so far."""
        ratio = (up / jm) if lower_is_better else (jm / up)
        self.rows[:] = [
            r
            for r in self.rows
            if (r["workload"], r["config"], r["jm_impl"]) != (workload, config, jm_impl)
        ]
        self.rows.append(
            {
                "workload": workload,
                "config": config,
                "unit": unit,
                "jmattersim": jm,
                "upstream": up,
                "ratio": ratio,
                "note": note,
                "jm_impl": jm_impl,
                "lower_is_better": lower_is_better,
                "run": len(self.info["runs"]),
            }
        )
        print(
            f"  {workload} [{config}] {jm_impl}: jmattersim {jm:.3g} {unit}, upstream "
            f"{up:.3g} {unit}, advantage {ratio:.2f}x  {note}",
            flush=True,
        )
        write(self.rows, self.info, quiet=True)  # partial results survive an interrupted run


def update_docs() -> None:
    """Replaces the table of ``docs/benchmarks.md`` between its markers with
    ``results.md``."""
    page = REPO / "docs" / "benchmarks.md"
    text = page.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    results = (HERE / "results.md").read_text().strip()
    page.write_text(text[:start] + "\n" + results + "\n" + text[end:])


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | config | jmattersim | upstream | advantage | notes | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        jm = f"{r['jmattersim']:.3g} {r['unit']}"
        if r["jm_impl"]:
            jm += f" ({r['jm_impl']})"
        lines.append(
            f"| {r['workload']} | {r['config']} | {jm} | {r['upstream']:.3g} "
            f"{r['unit']} | **{r['ratio']:.2f}×** | {r['note']} | {r['run']} |"
        )
    return "\n".join(lines)


def write(rows: list[dict], info: dict, quiet: bool = False) -> None:
    flops = [
        f"{k.removeprefix('flops_')}: {v['gflops']:.0f} GFLOP/s by XLA's count "
        f"({v['edge_fill']:.0%} of the padded edge slots real; run {v['run']}, "
        "whose float32 matmul ran at "
        + ", ".join(f"{m:.0f}" for m in v["matmul_gflops"].values())
        + " GFLOP/s)"
        for k, v in info.items()
        if k.startswith("flops_")
    ]
    runs = info["runs"]
    md = [
        f"Seed of the frame draws: {info['seed']}. Each row's two timings come from one "
        "run (one invocation); a partial rerun (`--only`) replaces its own rows. Runs:",
        "",
        *[
            f"{k}. `{r['command']}`, {r['started']}. Machine: {r['machine']}."
            + (
                ""
                if any(row["run"] == k for row in rows)
                else " (its rows replaced by a later run)"
            )
            for k, r in enumerate(runs, 1)
        ],
        "",
        "float32 matmul (jax, jit): "
        + ", ".join(f"{k}: {v:.0f} GFLOP/s" for k, v in info["matmul_gflops"].items()),
        "" if not flops else "Model work of the steady-state batches: " + "; ".join(flops),
        "",
        table(rows),
        "",
        "Advantage: jmattersim's speed over upstream's (time: upstream / jmattersim; rate: "
        "jmattersim / upstream); > 1 means jmattersim is faster or uses less memory.",
        "",
    ]
    text = "\n".join(md)
    if not quiet:
        print("\n" + text)
    (HERE / "results.md").write_text(text)
    (HERE / "results.json").write_text(
        json.dumps({"info": info, "rows": rows}, indent=2, default=str)
    )
    plot(rows, HERE / "results.png")


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 0.38 * max(len(rows), 4) + 1.2))
    labels = [
        f"{r['workload']} [{r['config']}]" + (f" {r['jm_impl']}" if r["jm_impl"] else "")
        for r in rows
    ]
    colors = ["tab:blue" if r["ratio"] >= 1 else "tab:red" for r in rows]
    ax.barh(range(len(rows)), [r["ratio"] for r in rows], color=colors)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_title(
        "jmattersim's advantage over upstream MatterSim (> 1: faster / less memory)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
