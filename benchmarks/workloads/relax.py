"""relax: a fresh process relaxing rattled frames, positions and cell (FIRE,
``FrechetCellFilter``), ``jmattersim.relax`` against upstream's ``BatchRelaxer``
(``benchmarks/relax_batch.py``), same fmax and step limit, converged counts."""

from __future__ import annotations

import sys

from harness import HERE, checkpoint, draw, fresh_cache, measured, model_dir, write_frames
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """32 frames (16 with ``--quick``), fmax 0.002, at most 500 steps."""
    relax_rows(name, 16 if bench.quick else 32, bench.seed, 0.002, 500, bench.add)


def relax_rows(name: str, n: int, seed: int, fmax: float, steps: int, add) -> None:
    frames = draw(n, seed + 3, max_atoms=24)
    for k, a in enumerate(frames):
        a.rattle(0.05, seed=k)
    src = write_frames(frames, f"relax-{n}-{seed}.extxyz")
    cache = fresh_cache()
    script = str(HERE / "relax_batch.py")
    extra = ["--fmax", str(fmax), "--steps", str(steps)]
    jm_cmd = [sys.executable, script, "jm", str(src), str(model_dir(name)), *extra]
    env = {"JMATTERSIM_COMPILE_CACHE": str(cache)}
    cold, warm = measured(jm_cmd, env), measured(jm_cmd, env)
    compiled_env = {"JMATTERSIM_COMPILE_CACHE": str(fresh_cache())}
    compiled_cmd = [*jm_cmd, "--driver", "compiled"]
    compiled = [measured(compiled_cmd, compiled_env) for _ in ("cold", "warm")]
    up = measured([sys.executable, script, "up", str(src), str(checkpoint(name)), *extra])
    runs = (("cold", cold), ("warm", warm), ("compiled, cold", compiled[0]))
    for label, jm in (*runs, ("compiled, warm", compiled[1])):
        add(
            "relax, whole process",
            name,
            "s",
            jm["child_wall"],
            up["child_wall"],
            f"{n} rattled frames (<= 24 atoms), positions + cell, fmax {fmax}, <= {steps} "
            f"steps; driver and compile cache: {label}; "
            f"converged {jm['converged']} vs {up['converged']} "
            f"(jmattersim failed {jm['failed']}: atoms closer than 0.5 Å, stopped there)",
            lower_is_better=True,
            jm_impl=label,
        )
    # optimiser steps differ where jmattersim stops failed structures: also per step
    for label, jm in (("warm", warm), ("compiled, warm", compiled[1])):
        add(
            "relax, structure-steps per second",
            name,
            "steps/s",
            jm["structure_steps"] / jm["relax"],
            up["structure_steps"] / up["relax"],
            f"every optimiser step of every structure, relaxation loop only ({label} cache); "
            f"{jm['structure_steps']} vs {up['structure_steps']} steps",
            jm_impl=label,
        )
