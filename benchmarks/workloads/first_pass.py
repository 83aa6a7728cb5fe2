"""first pass: a fresh process running 40 different structures through the ASE
calculator (``benchmarks/calculator_pass.py``), cold and warm compile cache."""

from __future__ import annotations

import sys

from harness import HERE, checkpoint, draw, fresh_cache, measured, model_dir, write_frames
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """40 structures."""
    first_pass_rows(name, 40, bench.seed, bench.add)


def first_pass_rows(name: str, n: int, seed: int, add) -> None:
    src = write_frames(draw(n, seed + 2), f"first-pass-{n}-{seed}.extxyz")
    cache = fresh_cache()
    script = str(HERE / "calculator_pass.py")
    jm_cmd = [sys.executable, script, "jm", str(src), str(model_dir(name))]
    env = {"JMATTERSIM_COMPILE_CACHE": str(cache)}
    cold, warm = measured(jm_cmd, env), measured(jm_cmd, env)
    up = measured([sys.executable, script, "up", str(src), str(checkpoint(name))])
    for label, jm in (("cold", cold), ("warm", warm)):
        add(
            "calculator first pass, whole process",
            name,
            "s",
            jm["child_wall"],
            up["child_wall"],
            f"{n} different structures; compile cache {label}; first pass "
            f"alone {jm['first_pass']:.1f} s vs {up['first_pass']:.1f} s",
            lower_is_better=True,
            jm_impl=label,
        )
