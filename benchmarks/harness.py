"""The measuring harness of ``run.py``: the models and frames, timing (interleaved,
best of), whole processes run fresh (wall time and peak memory), and the machine.
The workloads (``workloads/``) measure through it; ``report.py`` records and
writes their rows."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("JMATTERSIM_SHARED", REPO.parent / "shared"))
FILES = ("mptrj-random-1k.xyz", "alexandria-random-1k.xyz", "mpf-TP.xyz")
WORK = Path(tempfile.gettempdir()) / "jmattersim-bench"
SETTLE = 1.0  # s of quiet before each timed function
BATCH = 16

warnings.filterwarnings("ignore")


# ------------------------------------------------------------------------------ setup


def checkpoint(name: str) -> Path:
    """A genuine upstream checkpoint with seeded random weights (made once)."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"random-{name}.pth"
    if not path.exists():
        from jmattersim.testing import genuine_checkpoint

        genuine_checkpoint(path, name)
    return path


def model_dir(name: str) -> Path:
    """The checkpoint converted by jmattersim-convert (made once)."""
    out = WORK / f"model-{name}"
    if not (out / "config.json").exists():
        from convert_weights.cli import main

        assert main([str(checkpoint(name)), str(out), "--overwrite"]) == 0
    return out


@functools.cache
def jm_model(name: str):
    import jmattersim

    return jmattersim.load_model(model_dir(name))


@functools.cache
def up_potential(name: str):
    from jmattersim.testing import upstream_potential

    return upstream_potential(checkpoint(name))


@functools.cache
def all_frames() -> tuple:
    import ase.io

    return tuple(a for f in FILES for a in ase.io.read(SHARED / "data" / f, index=":"))


def draw(count: int, seed: int, max_atoms: int | None = None) -> list:
    """``count`` frames drawn at random from the three files."""
    pool = [a for a in all_frames() if max_atoms is None or len(a) <= max_atoms]
    rng = np.random.default_rng(seed)
    return [pool[i].copy() for i in rng.choice(len(pool), count, replace=False)]


def write_frames(frames: list, name: str) -> Path:
    import ase.io

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / name
    ase.io.write(path, frames, format="extxyz")
    return path


def fresh_cache() -> Path:
    """An empty compile-cache folder (``JMATTERSIM_COMPILE_CACHE``) under ``WORK``."""
    return Path(tempfile.mkdtemp(prefix="xla-", dir=WORK))


# ----------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best wall time of each function, the functions taking turns. Each starts
    after a pause: torch's and XLA's worker threads spin for a while after a call,
    and would otherwise slow down whichever function comes next."""
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            time.sleep(SETTLE)
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def matmul_rate() -> dict[str, float]:
    """float32 GFLOP/s of this CPU on the model's matmul shapes (edges x units)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for e, k, m in [(12288, 128, 128), (12288, 256, 256)]:
        a = jnp.ones((e, k), jnp.float32)
        b = jnp.ones((k, m), jnp.float32)
        f = jax.jit(lambda a, b: a @ b)
        jax.block_until_ready(f(a, b))
        t = interleaved({"mm": lambda f=f, a=a, b=b: jax.block_until_ready(f(a, b))}, 20)["mm"]
        out[f"{e}x{k}x{m}"] = 2 * e * k * m / t / 1e9
    return out


# -------------------------------------------------------------------------- processes


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Runs ``cmd`` in a fresh process, through a wrapper process that reports its
    wall time (``child_wall``, s), its resident high-water mark (``peak_mib``) and
    the last JSON line the command printed."""
    wrapper = [sys.executable, str(HERE / "run.py"), "--measure", "--", *cmd]
    proc = subprocess.run(
        wrapper, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_child(cmd: list[str]) -> None:
    """(--measure) Runs ``cmd``; prints its wall time, peak RSS and its JSON line."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    wall = time.perf_counter() - t
    report = next((json.loads(line) for line in out.splitlines()[::-1] if line.startswith("{")), {})
    print(json.dumps({**report, "child_wall": wall, "peak_mib": usage.ru_maxrss / 1024}))
    sys.exit(os.waitstatus_to_exitcode(status))


def jm_cli() -> str:
    return str(Path(sys.executable).with_name("jmattersim"))


# ---------------------------------------------------------------------------- machine


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average at start "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )
