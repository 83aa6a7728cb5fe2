"""md_many: small systems at temperature, as high-throughput users run them: all in
one ``jmattersim.md`` call, against upstream's calculator under ASE's ``Langevin``
and jmattersim's single-structure ``md``, each one structure after another
(``benchmarks/md_many.py``, whole fresh processes)."""

from __future__ import annotations

import sys

from harness import HERE, checkpoint, draw, fresh_cache, measured, model_dir, write_frames
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """16 frames of 2-16 atoms, NVT Langevin at 600 K, 200 steps of 1 fs (8 frames
    and no single-structure row with ``--quick``)."""
    count = 8 if bench.quick else 16
    frames = [a for a in draw(400, bench.seed + 5, max_atoms=16) if len(a) >= 2][:count]
    src = write_frames(frames, f"md-many-{count}-{bench.seed}.extxyz")
    script = str(HERE / "md_many.py")
    steps = 200
    env = {"JMATTERSIM_COMPILE_CACHE": str(fresh_cache())}
    jm = [sys.executable, script, "many", str(src), str(model_dir(name)), "--steps", str(steps)]
    cold, warm = measured(jm, env), measured(jm, env)
    up = measured(
        [sys.executable, script, "up", str(src), str(checkpoint(name)), "--steps", str(steps)]
    )
    what = f"{count} frames of 2-16 atoms, NVT Langevin 600 K, {steps} steps of 1 fs"
    for label, run in (("cold", cold), ("warm", warm)):
        bench.add(
            "MD of many small systems, whole process",
            name,
            "s",
            run["child_wall"],
            up["child_wall"],
            f"{what}, all in one jmattersim.md call (compile cache {label}) against upstream's "
            f"calculator under ASE Langevin, one after another; {run['failed']} systems "
            "stopped (atoms closer than 0.5 Å on the random weights) and kept their slots, "
            "so the compiled step did the same work",
            lower_is_better=True,
            jm_impl=label,
        )
    bench.add(
        "MD of many small systems, system-steps per second",
        name,
        "steps/s",
        count * steps / warm["md"],
        count * steps / up["md"],
        f"{what}: the MD call alone (warm cache), every system's steps counted",
        jm_impl="warm",
    )
    if not bench.quick:
        one = measured(
            [sys.executable, script, "one", str(src), str(model_dir(name)), "--steps", str(steps)],
            {"JMATTERSIM_COMPILE_CACHE": str(fresh_cache())},
        )
        bench.add(
            "MD of many small systems against jmattersim one at a time, whole process",
            name,
            "s",
            cold["child_wall"],
            one["child_wall"],
            f"{what}: one jmattersim.md call for all against one call per frame (jax-md's "
            "path), both with the compile cache cold",
            lower_is_better=True,
            jm_impl="cold",
        )
