"""predict: a fresh process of ``jmattersim predict`` against a fresh process of
upstream's batched script (``benchmarks/upstream_predict.py``: read,
``build_dataloader``, ``predict_properties``, write); imports, model loading and
compilation included; the compile cache empty (cold) and filled (warm). Peak
memory: the resident high-water mark of each process (``wait4``)."""

from __future__ import annotations

import sys

from harness import (
    HERE,
    WORK,
    checkpoint,
    draw,
    fresh_cache,
    jm_cli,
    measured,
    model_dir,
    write_frames,
)
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """1000 frames (300 with ``--quick``), then a short job of 40 frames, where
    compilation weighs most."""
    predict_rows(name, 300 if bench.quick else 1000, bench.seed, bench.add)
    predict_rows(name, 40, bench.seed, bench.add, short=True)


def predict_rows(name: str, n: int, seed: int, add, short: bool = False) -> None:
    src = write_frames(draw(n, seed), f"predict-{n}-{seed}.extxyz")
    cache = fresh_cache()
    env = {"JMATTERSIM_COMPILE_CACHE": str(cache)}
    jm_cmd = [
        jm_cli(),
        "predict",
        str(src),
        "--model",
        str(model_dir(name)),
        "--out",
        str(WORK / "jm.extxyz"),
        "--quiet",
        "--restart",
    ]
    up_cmd = [
        sys.executable,
        str(HERE / "upstream_predict.py"),
        str(src),
        str(checkpoint(name)),
        str(WORK / "up.extxyz"),
    ]
    cold = measured(jm_cmd, env)
    warm = measured(jm_cmd, env)
    up = measured(up_cmd)
    for label, jm in (("cold", cold), ("warm", warm)):
        add(
            "predict, short job, whole process" if short else "predict, whole process",
            name,
            "s",
            jm["child_wall"],
            up["child_wall"],
            f"{n} frames; compile cache {label}",
            lower_is_better=True,
            jm_impl=label,
        )
    if short:
        return
    add(
        "predict, peak memory",
        name,
        "MiB",
        warm["peak_mib"],
        up["peak_mib"],
        f"{n} frames; resident high-water mark",
        lower_is_better=True,
    )
