"""programs: what each job costs to trace and compile, now and before the work of
issue 24 (commit ``BEFORE``), in fresh processes with the compile cache off
(``benchmarks/program_costs.py``). The baseline column holds the same job run by
``BEFORE``'s code on the same machine (upstream compiles nothing)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from harness import HERE, SHARED, WORK, measured, model_dir, write_frames
from report import Bench

BEFORE = "1d317e7"  # the head when issue 24's work began
JOBS = {
    "energy": "jax.jit(energy_fn), Si 64 atoms",
    "forces": "evaluate: E, F, S, Si 64 atoms",
    "hessian": "derivatives.hessian, Si 64 atoms",
    "fc3": "one chunk of fc3's mixed third derivatives, Si 64 atoms",
    "train": "train.train, one epoch of 16 MPtrj frames",
}


def measure(bench: Bench, name: str) -> None:
    """Every job of ``program_costs.py``."""
    program_rows(name, bench.seed, bench.add)


def program_rows(name: str, seed: int, add) -> None:
    import ase.io

    pool = ase.io.read(SHARED / "data" / "mptrj-random-1k.xyz", index=":")
    rng = np.random.default_rng(seed + 5)
    frames = write_frames(
        [pool[i] for i in rng.choice(len(pool), 16, replace=False)], "train-16.extxyz"
    )
    before = _checkout(BEFORE)
    script = str(HERE / "program_costs.py")
    for job, what in JOBS.items():
        cmd = [sys.executable, script, job, str(model_dir(name)), str(frames)]
        now, old = measured(cmd), measured([*cmd, str(before)])
        total = {
            k: r["trace_s"] + r["lower_s"] + r["compile_s"] for k, r in (("now", now), ("old", old))
        }
        add(
            f"trace + compile: {job}",
            name,
            "s",
            total["now"],
            total["old"],
            f"{what}; baseline column: {BEFORE}'s code; trace {now['trace_s']:.1f} + lower "
            f"{now['lower_s']:.1f} + XLA {now['compile_s']:.1f} s ({old['trace_s']:.1f} + "
            f"{old['lower_s']:.1f} + {old['compile_s']:.1f}) in {now['compiles']:.0f} "
            f"({old['compiles']:.0f}) compiles; largest StableHLO module {now['hlo_lines']} "
            f"lines ({old['hlo_lines']}); compile cache off",
            lower_is_better=True,
            jm_impl=f"vs {BEFORE}",
        )


def _checkout(commit: str):
    """``jmattersim/`` as it was at ``commit`` (``git archive``, made once)."""
    out = WORK / f"before-{commit}"
    if not (out / "jmattersim" / "__init__.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", commit, "jmattersim"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out
