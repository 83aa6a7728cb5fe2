"""jmattersim against upstream MatterSim (PyTorch), side by side, as users run them.

    python benchmarks/run.py --quick            # about 20 minutes on 2 cores
    python benchmarks/run.py                    # the full suite (1000-frame predict, 5M rows)
    python benchmarks/run.py --seed 7 --only predict steady

Every row uses a public entry point with its default arguments; frames are drawn
at random from all three files of ``../shared/data`` with ``--seed``. Models are
genuine-format checkpoints (upstream's M3Gnet with seeded random weights, saved by
upstream's ``Potential.save``; converted by ``jmattersim-convert``).

The workloads (``--only``; their registry: ``workloads/__init__.py``, one module
each under ``workloads/``): predict (whole process, cold and warm compile cache,
peak memory), steady (E+F+S steady state, model FLOP rate), inverse_design (b1,
b2), first_pass, relax, md, md_many, phonons, train, programs (trace and compile
seconds and StableHLO size of each kind of job, against the code before issue
24), relaxed_gradients (relax_fn's gradient and vmap against its forward pass).
``harness.py`` measures (models, frames, timing, fresh processes),
``report.py`` records and writes the rows.

Timings of in-process rows are interleaved (jmattersim, upstream, ...) and the
best repetition kept; whole-process rows run once each. Output: the table on
stdout and in ``results.md``, raw numbers in ``results.json``, ``results.png``.
Run on a quiet machine: the load average is printed with the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from harness import HERE, machine, matmul_rate, measure_child
from report import Bench, update_docs, write
from workloads import WORKLOADS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--measure", "--"]:
        measure_child(argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, 1M only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame draws")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=list(WORKLOADS),
        metavar="WORKLOAD",
        help=f"workloads (default: all): {' '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--configs",
        nargs="*",
        default=None,
        help="architectures (default: 1M and 5M; 1M with --quick)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="only copy results.md into the table of docs/benchmarks.md",
    )
    args = parser.parse_args(argv)
    if args.update_docs:
        update_docs()
        return 0
    configs = args.configs or (["1M"] if args.quick else ["1M", "5M"])
    only = set(args.only or WORKLOADS)
    rows: list[dict] = []
    runs: list[dict] = []
    kept: dict = {}
    previous = HERE / "results.json"
    if args.only and previous.exists():  # a partial rerun replaces its own rows only
        before = json.loads(previous.read_text())
        rows, runs = before["rows"], before["info"].get("runs", [])
        kept = {k: v for k, v in before["info"].items() if k.startswith("flops_")}
    import jmattersim  # noqa: F401 - its process settings, before JAX runs

    info = {"machine": machine(), "quick": args.quick, "seed": args.seed, **kept}
    runs.append(
        {
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python benchmarks/run.py", *argv]),
            "machine": info["machine"],
        }
    )
    info["runs"] = runs
    print(f"machine: {info['machine']}", flush=True)
    info["matmul_gflops"] = matmul_rate()
    print(f"float32 matmul GFLOP/s: {info['matmul_gflops']}", flush=True)

    bench = Bench(seed=args.seed, quick=args.quick, rows=rows, info=info)
    for name in configs:  # the workloads run per architecture, then the others on 1M
        for key, workload in WORKLOADS.items():
            if workload.every_config and key in only:
                workload.measure(bench, name)
    for key, workload in WORKLOADS.items():
        if not workload.every_config and key in only:
            workload.measure(bench, "1M")
    write(rows, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
