"""jmattersim against upstream MatterSim (PyTorch), side by side, as users run them.

    python benchmarks/run.py --quick            # about 20 minutes on 2 cores
    python benchmarks/run.py                    # the full suite (1000-frame predict, 5M rows)
    python benchmarks/run.py --seed 7 --only predict steady

Every row uses a public entry point with its default arguments; frames are drawn
at random from all three files of ``../shared/data`` with ``--seed``. Models are
genuine-format checkpoints (upstream's M3Gnet with seeded random weights, saved by
upstream's ``Potential.save``; converted by ``jmattersim-convert``).

- predict: a fresh process of ``jmattersim predict`` against a fresh process of
  upstream's batched script (``benchmarks/upstream_predict.py``: read,
  ``build_dataloader``, ``predict_properties``, write); imports, model loading and
  compilation included; the compile cache empty (cold) and filled (warm). Peak
  memory: the resident high-water mark of each process (``wait4``).
- steady: energy, forces and stress of the same frames, steady state (second
  pass): ``evaluate``, ``forward_batch`` (batches of 16) and the ASE calculator
  against upstream's ``predict_properties`` (its best batch size) and upstream's
  ASE calculator. XLA's FLOP count gives the rate of the model work.
- inverse_design: the inverse-design workload through ``forward_batch`` under ``jit``/``grad``
  as the user guide writes it (a host neighbour list, then ``jax.grad``), batches of
  16: energy and its gradient in atom types, positions and lattice (b1), and the
  gradient of a force-and-stress loss (b2); upstream: its model in torch autograd.
- first pass: a fresh process running 40 different structures through the ASE
  calculator (``benchmarks/calculator_pass.py``), cold and warm compile cache.
- relax: a fresh process relaxing rattled frames, positions and cell (FIRE,
  ``FrechetCellFilter``), ``jmattersim.relax`` against upstream's ``BatchRelaxer``
  (``benchmarks/relax_batch.py``), same fmax and step limit, converged counts.
- md: ASE's velocity Verlet driving each calculator, and a jitted jax-md step.

Timings of in-process rows are interleaved (jmattersim, upstream, ...) and the
best repetition kept; whole-process rows run once each. Output: the table on
stdout and in ``results.md``, raw numbers in ``results.json``, ``results.png``.
Run on a quiet machine: the load average is printed with the machine.
"""

from __future__ import annotations

import argparse
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


# ---------------------------------------------------------------------- the workloads


def predict_rows(name: str, n: int, seed: int, add) -> None:
    src = write_frames(draw(n, seed), f"predict-{n}-{seed}.extxyz")
    cache = Path(tempfile.mkdtemp(prefix="xla-", dir=WORK))
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
            "predict, whole process",
            name,
            "s",
            jm["child_wall"],
            up["child_wall"],
            f"{n} frames; compile cache {label}",
            lower_is_better=True,
            jm_impl=label,
        )
    add(
        "predict, peak memory",
        name,
        "MiB",
        warm["peak_mib"],
        up["peak_mib"],
        f"{n} frames; resident high-water mark",
        lower_is_better=True,
    )


def steady_rows(name: str, n: int, seed: int, reps: int, add, info: dict) -> None:
    import jax

    import jmattersim

    frames = draw(n, seed + 1)
    model = jm_model(name)
    pot = up_potential(name)
    from mattersim.datasets.utils.build import build_dataloader
    from mattersim.forcefield.potential import MatterSimCalculator

    def up_batched(batch_size):
        def run():
            loader = build_dataloader(
                frames, model_type="m3gnet", batch_size=batch_size, only_inference=True
            )
            return pot.predict_properties(loader, include_forces=True, include_stresses=True)

        return run

    up_calc = MatterSimCalculator(pot, device="cpu")
    jm_calc = jmattersim.MatterSimCalculator(model)

    def through(calc):
        def run():
            for a in frames:
                a = a.copy()
                a.calc = calc
                a.get_potential_energy(), a.get_forces(), a.get_stress()

        return run

    def jm_forward_batch():
        for k in range(0, n, BATCH):
            out = jmattersim.forward_batch(
                model, frames[k : k + BATCH], include_forces=True, include_stresses=True
            )
        return jax.block_until_ready(out)

    fns = {
        "evaluate": lambda: jmattersim.evaluate(model, frames),
        "forward_batch": jm_forward_batch,
        "calculator": through(jm_calc),
        "up16": up_batched(16),
        "up32": up_batched(32),
        "up64": up_batched(64),
        "up_calc": through(up_calc),
    }
    for fn in fns.values():  # first pass: compilation, upstream's lazy set-up
        fn()
    t = interleaved(fns, reps)
    best_up = min(("up16", "up32", "up64"), key=t.get)
    for impl in ("evaluate", "forward_batch", "calculator"):
        add(
            "E+F+S steady state",
            name,
            "frames/s",
            n / t[impl],
            n / t[best_up],
            f"{n} frames; upstream predict_properties, batch {best_up[2:]} (its best of 16/32/64)",
            jm_impl=impl,
        )
    add(
        "E+F+S steady state",
        name,
        "frames/s",
        n / t["calculator"],
        n / t["up_calc"],
        f"{n} frames; both ASE calculators, one structure at a time",
        jm_impl="calculator vs upstream calculator",
    )
    info[f"flops_{name}"] = {
        **model_flop_rate(model, frames, reps),
        "run": len(info["runs"]),
        "matmul_gflops": info["matmul_gflops"],
    }


def model_flop_rate(model, frames: list, reps: int) -> dict:
    """The FLOP rate of the model work of ``evaluate`` on ``frames``: its batches,
    padded and on the device, run through the compiled function; XLA's FLOP count
    of each (padding included: the work the machine does) over their time."""
    import jax

    from jmattersim._src import engine
    from jmattersim._src.graph import structure_graph

    graphs = [structure_graph(a, model.config) for a in frames]
    params = model.astype(np.float32).params
    flops = padded = real = 0.0
    batches = []
    for group, budget in engine.plan([engine.counts_of(g) for g in graphs]):
        batch = jax.device_put(
            engine.pad([graphs[k] for k in group], budget, model.config, np.float32)
        )
        cost = engine.predict_batch.lower(model.config, params, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops += float(cost["flops"])
        padded += budget.edges
        real += sum(graphs[k].n_edge for k in group)
        batches.append(batch)

    def model_work():
        for batch in batches:
            out = engine.predict_batch(model.config, params, batch)
        jax.block_until_ready(out)

    model_work()
    seconds = interleaved({"work": model_work}, max(reps, 3))["work"]
    return {
        "xla_flops": flops,
        "seconds": seconds,
        "edge_fill": real / padded,
        "gflops": flops / seconds / 1e9,
    }


def inverse_design_rows(name: str, n: int, seed: int, add) -> None:
    """b1/b2 through forward_batch under jit, as docs/guide/batches.md writes it."""
    import jax
    import jax.numpy as jnp

    import jmattersim
    from jmattersim._src.batch import atoms_arrays

    model = jm_model(name)
    frames = draw(n, seed + 4, max_atoms=64)
    chunks = [frames[k : k + BATCH] for k in range(0, n, BATCH)]

    def jm(loss: bool):
        @functools.partial(jax.jit, static_argnums=(3,))
        def step(at, pos, lat, sizes, nbrs):
            def energy(at, pos, lat):
                out = jmattersim.forward_batch(
                    model,
                    atom_types=at,
                    positions=pos,
                    lattice=lat,
                    sizes=sizes,
                    neighbors=nbrs,
                    include_forces=loss,
                    include_stresses=loss,
                )
                if not loss:
                    return out["total_energy"].sum()
                return jnp.sum(out["forces"] ** 2) + jnp.sum(out["stresses"] ** 2)

            return jax.grad(energy, argnums=(0, 1, 2))(at, pos, lat)

        def run():
            for chunk in chunks:
                at, pos, lat, sizes, _ = atoms_arrays(chunk, model.config)
                nbrs = jmattersim.neighbor_list(model, chunk)  # host, outside jit
                grads = step(
                    jnp.asarray(at, jnp.float32),
                    jnp.asarray(pos, jnp.float32),
                    jnp.asarray(lat, jnp.float32),
                    tuple(int(s) for s in sizes),
                    nbrs,
                )
            return jax.block_until_ready(grads)

        return run

    for loss, label in (
        (False, "b1. E + grad(types, pos, lattice)"),
        (True, "b2. grad of force+stress loss"),
    ):
        fns = {"jm": jm(loss), "up": up_inverse_design(name, chunks, loss)}
        t0 = time.perf_counter()
        fns["jm"]()
        compile_s = time.perf_counter() - t0
        fns["up"]()
        # best of 3: jmattersim's first pass after torch's first large one is slower
        # (its memory grows again), and one such pass is not its steady state
        t = interleaved(fns, 3)
        add(
            label,
            name,
            "frames/s",
            n / t["jm"],
            n / t["up"],
            f"{n} frames (at most 64 atoms), batches of {BATCH}; first pass {compile_s:.0f} s",
        )


def up_inverse_design(name: str, chunks: list, loss: bool) -> Callable[[], object]:
    """Upstream's model on the same batches in torch autograd; the graph of each
    batch built for it (as jmattersim's neighbour list is)."""
    import torch
    from mattersim.forcefield.potential import batch_to_dict
    from torch_geometric.data import Batch

    from jmattersim.testing import upstream_graph

    model = up_potential(name).model
    args = model.model_args

    def one(chunk):
        data = [upstream_graph(a, args)[0] for a in chunk]
        inp = batch_to_dict(Batch.from_data_list(data), device="cpu")
        numbers = inp["atom_attr"].squeeze(1).long()
        atom_types = torch.nn.functional.one_hot(numbers, model.max_z + 1).float()
        atom_types.requires_grad_(True)
        pos = inp["atom_pos"].detach().clone().requires_grad_(True)
        cell = inp["cell"].detach().clone().requires_grad_(True)
        model.one_hot_atoms = lambda species: atom_types
        try:
            if not loss:
                energy = model(dict(inp, atom_pos=pos, cell=cell))
                return torch.autograd.grad(energy.sum(), [atom_types, pos, cell])
            strain = torch.zeros_like(cell, requires_grad=True)
            deform = torch.eye(3) + strain
            pos_s = torch.einsum("ni,nij->nj", pos, deform[inp["batch"]])
            energy = model(dict(inp, atom_pos=pos_s, cell=cell @ deform))
            de_dr, de_deps = torch.autograd.grad(energy.sum(), [pos, strain], create_graph=True)
            stress = de_deps / torch.abs(torch.linalg.det(cell))[:, None, None] * 160.21766
            value = (de_dr**2).sum() + (stress**2).sum()
            return torch.autograd.grad(value, [atom_types, pos, cell])
        finally:
            del model.one_hot_atoms

    return lambda: [one(c) for c in chunks]


def first_pass_rows(name: str, n: int, seed: int, add) -> None:
    src = write_frames(draw(n, seed + 2), f"first-pass-{n}-{seed}.extxyz")
    cache = Path(tempfile.mkdtemp(prefix="xla-", dir=WORK))
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


def train_rows(name: str, n: int, seed: int, add) -> None:
    """One fine-tuning epoch (energy, forces, stresses; batches of 16) over ``n``
    labelled MPtrj frames drawn at random, as whole processes
    (``benchmarks/train_epoch.py``): jmattersim.train with the compile cache cold
    and warm against upstream's train_model; steady state: the second epoch of a
    two-epoch jmattersim run against upstream's epoch (torch compiles nothing: its
    first epoch is its steady state); peak memory with remat off and on."""
    import ase.io

    pool = ase.io.read(SHARED / "data" / "mptrj-random-1k.xyz", index=":")
    rng = np.random.default_rng(seed + 5)
    frames = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
    src = write_frames(frames, f"train-{n}-{seed}.extxyz")
    script = str(HERE / "train_epoch.py")
    jm_cmd = [sys.executable, script, "jm", str(src), str(model_dir(name))]
    up_cmd = [sys.executable, script, "up", str(src), str(checkpoint(name))]
    env = {"JMATTERSIM_COMPILE_CACHE": str(Path(tempfile.mkdtemp(prefix="xla-", dir=WORK)))}
    what = f"{n} MPtrj frames, E+F+S, batches of {BATCH}, Huber 0.01"
    up = measured(up_cmd)
    cold, warm = measured(jm_cmd, env), measured(jm_cmd, env)
    for label, jm in (("cold", cold), ("warm", warm)):
        add(
            "fine-tune 1 epoch, whole process",
            name,
            "s",
            jm["child_wall"],
            up["child_wall"],
            f"{what}; jmattersim.train vs upstream's train_model; compile cache {label}; "
            f"epoch alone {jm['epochs'][0]:.1f} s vs {up['epochs'][0]:.1f} s",
            lower_is_better=True,
            jm_impl=label,
        )
    # a user's run (default epochs=1000: budgets planned over 64 epochs), stopped after two
    jm2 = measured([*jm_cmd, "--epochs", "1000", "--max-epochs", "2"], env)
    add(
        "fine-tune epoch, steady state",
        name,
        "s",
        jm2["epochs"][1],
        up["epochs"][0],
        f"{what}; jmattersim: second epoch of a default run (epochs=1000) stopped after "
        f"two; upstream: its epoch (train_one_epoch); {train_padding(name, src, 1000)}",
        lower_is_better=True,
    )
    remat_env = {"JMATTERSIM_COMPILE_CACHE": str(Path(tempfile.mkdtemp(prefix="xla-", dir=WORK)))}
    remat = measured([*jm_cmd, "--remat"], remat_env)
    for label, jm in (("remat=False", cold), ("remat=True", remat)):
        add(
            "fine-tune 1 epoch, peak memory",
            name,
            "MiB",
            jm["peak_mib"],
            up["peak_mib"],
            f"{what}; resident high-water mark of the whole process, compile cache cold "
            f"(compilation included); remat=False warm cache {warm['peak_mib']:.0f} MiB; "
            f"{label}: {jm['child_wall']:.0f} s, epoch alone {jm['epochs'][0]:.1f} s",
            lower_is_better=True,
            jm_impl=label,
        )


def train_padding(name: str, src: Path, epochs: int) -> str:
    """How full jmattersim's padded training batches are in a run of ``epochs``:
    the real edges and triplets of the first epoch's batches over the slots of the
    budgets they are padded to (each batch in the smallest that holds it)."""
    import math

    from jmattersim._src import train_plan as plan
    from jmattersim._src.dataset import read_frames
    from jmattersim._src.padding import counts_of
    from jmattersim._src.train_settings import TrainSettings

    frames = read_frames(src, jm_model(name).config, True, True)
    settings = TrainSettings(epochs=epochs, batch_size=BATCH)
    planned = min(epochs, plan.PLANNED_EPOCHS)
    steps = planned * math.ceil(len(frames) / BATCH)
    levels = settings.budget_levels if steps >= plan.SHORT_RUN_STEPS else 1
    budgets = plan.training_budgets(frames, [], BATCH, [settings.seed], planned, levels)
    counts = np.array([counts_of(f.graph) for f in frames], np.int64)
    real = slots = np.zeros(2)
    for index in plan.batches_of(plan.epoch_order(len(frames), settings.seed, 0), BATCH):
        total = tuple(int(c) for c in counts[index].sum(axis=0))
        budget = next(b for b in budgets if all(c < s for c, s in zip(total, b, strict=True)))
        real = real + np.array(total[1:3])
        slots = slots + np.array([budget.edges, budget.triplets])
    fill = real / slots
    sizes = ", ".join(f"{b.edges}/{b.triplets}" for b in budgets)
    return (
        f"{len(budgets)} padded budget(s) (edges/triplets {sizes}); "
        f"{fill[0]:.0%} of edge slots, {fill[1]:.0%} of triplet slots real"
    )


def phonon_structures() -> dict[str, tuple]:
    """name -> (ASE structure, supercell N, workflow): diamond Si (phonopy needs one
    displacement), a low-symmetry MPtrj frame with 6 symmetry-irreducible atoms (one
    ASE calculation per displacement upstream; one batched call here), and Si for fc3."""
    from ase.build import bulk
    from ase.io import read

    frames = read(SHARED / "data" / "mptrj-random-1k.xyz", ":")
    low = next(a for a in frames if a.get_chemical_formula() == "GeO5Pb3")  # Cmm2, 9 atoms
    si = bulk("Si", "diamond", 5.43, cubic=True)
    return {
        "Si 2x2x2 (64 atoms)": (si, 2, "phonons"),
        "whole job, Si 2x2x2 (64 atoms)": (si, 2, "workflow"),
        "GeO5Pb3 2x2x2 (72 atoms)": (low, 2, "phonons"),
        "fc3, Si 2x2x2 (64 atoms)": (si, 2, "fc3"),
    }


def phonon_rows(name: str, add) -> None:
    script = str(HERE / "phonon_workflow.py")
    for label, (atoms, n, kind) in phonon_structures().items():
        path = WORK / f"phonons-{kind}-{atoms.get_chemical_formula()}.extxyz"
        atoms.write(path)
        cache = Path(tempfile.mkdtemp(prefix="xla-", dir=WORK))
        env = {"JMATTERSIM_COMPILE_CACHE": str(cache)}
        jm_cmd = [sys.executable, script, "jm", kind, str(path), str(model_dir(name)), str(n)]
        cold, warm = measured(jm_cmd, env), measured(jm_cmd, env)
        up_cmd = [sys.executable, script, "up", kind, str(path), str(checkpoint(name)), str(n)]
        up = measured(up_cmd)
        what = {"phonons": "phonon force constants", "workflow": "phonon workflow"}.get(
            kind, "fc2 + fc3"
        )
        baseline = {"phonons": "PhononWorkflow (calc_spec=False)", "workflow": "PhononWorkflow"}
        for cache_state, jm in (("cold", cold), ("warm", warm)):
            add(
                f"{what}, whole process: {label.split(', ')[-1]}",
                name,
                "s",
                jm["child_wall"],
                up["child_wall"],
                f"exact vs upstream's {baseline.get(kind, 'bte.py')} "
                f"({up['displacements']} displaced supercells); compile cache {cache_state}; "
                f"workflow alone {jm['workflow']:.1f} s vs {up['workflow']:.1f} s",
                lower_is_better=True,
                jm_impl=cache_state,
            )


def relax_rows(name: str, n: int, seed: int, fmax: float, steps: int, add) -> None:
    frames = draw(n, seed + 3, max_atoms=24)
    for k, a in enumerate(frames):
        a.rattle(0.05, seed=k)
    src = write_frames(frames, f"relax-{n}-{seed}.extxyz")
    cache = Path(tempfile.mkdtemp(prefix="xla-", dir=WORK))
    script = str(HERE / "relax_batch.py")
    extra = ["--fmax", str(fmax), "--steps", str(steps)]
    jm_cmd = [sys.executable, script, "jm", str(src), str(model_dir(name)), *extra]
    env = {"JMATTERSIM_COMPILE_CACHE": str(cache)}
    cold, warm = measured(jm_cmd, env), measured(jm_cmd, env)
    up = measured([sys.executable, script, "up", str(src), str(checkpoint(name)), *extra])
    for label, jm in (("cold", cold), ("warm", warm)):
        add(
            "relax, whole process",
            name,
            "s",
            jm["child_wall"],
            up["child_wall"],
            f"{n} rattled frames (<= 24 atoms), positions + cell, fmax {fmax}, <= {steps} "
            f"steps; compile cache {label}; converged {jm['converged']} vs {up['converged']} "
            f"(jmattersim failed {jm['failed']}: atoms closer than 0.5 Å, stopped there)",
            lower_is_better=True,
            jm_impl=label,
        )
    # optimiser steps differ where jmattersim stops failed structures: also per step
    add(
        "relax, structure-steps per second",
        name,
        "steps/s",
        warm["structure_steps"] / warm["relax"],
        up["structure_steps"] / up["relax"],
        f"every optimiser step of every structure, relaxation loop only (warm cache); "
        f"{warm['structure_steps']} vs {up['structure_steps']} steps",
        jm_impl="warm",
    )


def md_rows(name: str, sizes: list[int], steps: int, add) -> None:
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from mattersim.forcefield.potential import MatterSimCalculator

    import jmattersim

    for size in sizes:
        reps = round((size / 8) ** (1 / 3))
        atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps)
        atoms.rattle(0.02, seed=0)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))

        def ase_md(calc, atoms=atoms):
            a = atoms.copy()
            a.calc = calc
            dyn = VelocityVerlet(a, 1.0 * units.fs)
            dyn.run(1)
            return lambda: dyn.run(steps)

        fns = {
            "jm": ase_md(jmattersim.MatterSimCalculator(jm_model(name))),
            "up": ase_md(MatterSimCalculator(up_potential(name), device="cpu")),
        }
        t = interleaved(fns, 2)
        add(
            "MD steps/s, ASE velocity Verlet",
            f"{name}, Si {size}",
            "steps/s",
            steps / t["jm"],
            steps / t["up"],
            "both ASE calculators",
            jm_impl="calculator",
        )
        run = jax_md_steps(name, atoms, steps)
        add(
            "MD steps/s",
            f"{name}, Si {size}",
            "steps/s",
            steps / min(run() for _ in range(2)),
            steps / t["up"],
            "jitted jax-md NVE step, list updated every step, against upstream through ASE",
            jm_impl="jax-md",
        )


def jax_md_steps(name: str, atoms, steps: int) -> Callable[[], float]:
    import jax
    from ase import units
    from jax_md import simulate, space

    from jmattersim.jax_md import atoms_to_jax_md, mattersim_neighbor_list

    R, box, species = atoms_to_jax_md(atoms)
    neighbor_fn, energy_fn = mattersim_neighbor_list(jm_model(name), box, species)
    _, shift = space.periodic_general(box, fractional_coordinates=True)
    init, apply = simulate.nve(energy_fn, shift, 1.0 * units.fs)
    nbrs = neighbor_fn.allocate(R)
    state = init(
        jax.random.PRNGKey(0), R, units.kB * 300, mass=atoms.get_masses()[:, None], neighbor=nbrs
    )

    @jax.jit
    def step(state, nbrs):
        state = apply(state, neighbor=nbrs)
        return state, nbrs.update(state.position)

    start = jax.block_until_ready(step(state, nbrs))

    def run() -> float:
        s, nb = start
        t = time.perf_counter()
        for _ in range(steps):
            s, nb = step(s, nb)
        jax.block_until_ready(s)
        assert not bool(nb.did_buffer_overflow)
        return time.perf_counter() - t

    return run


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


# -------------------------------------------------------------------------- driver


def plan(quick: bool) -> dict:
    return {
        "configs": ["1M"] if quick else ["1M", "5M"],
        "predict_frames": 300 if quick else 1000,
        "steady_frames": 96 if quick else 200,
        "inverse_design_frames": 32 if quick else 64,
        "first_pass": 40,
        "relax_frames": 16 if quick else 32,
        "relax_fmax": 0.002,
        "relax_steps": 500,
        "md_sizes": [216] if quick else [216, 1000],
        "md_steps": 3 if quick else 5,
        "reps": 1 if quick else 2,
        "train_frames": 256,
    }


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
        help="workloads: predict steady inverse_design first_pass relax md phonons train",
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
    p = plan(args.quick)
    if args.configs:
        p["configs"] = args.configs
    workloads = [
        "predict",
        "steady",
        "inverse_design",
        "first_pass",
        "relax",
        "md",
        "phonons",
        "train",
    ]
    only = set(args.only or workloads)
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

    def add(workload, config, unit, jm, up, note="", lower_is_better=False, jm_impl=""):
        ratio = (up / jm) if lower_is_better else (jm / up)
        rows[:] = [
            r
            for r in rows
            if (r["workload"], r["config"], r["jm_impl"]) != (workload, config, jm_impl)
        ]
        rows.append(
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
                "run": len(runs),
            }
        )
        print(
            f"  {workload} [{config}] {jm_impl}: jmattersim {jm:.3g} {unit}, upstream "
            f"{up:.3g} {unit}, advantage {ratio:.2f}x  {note}",
            flush=True,
        )
        write(rows, info, quiet=True)  # partial results survive an interrupted run

    for name in p["configs"]:
        if "predict" in only:
            predict_rows(name, p["predict_frames"], args.seed, add)
        if "steady" in only:
            steady_rows(name, p["steady_frames"], args.seed, p["reps"], add, info)
        if "inverse_design" in only:
            inverse_design_rows(name, p["inverse_design_frames"], args.seed, add)
    if "first_pass" in only:
        first_pass_rows("1M", p["first_pass"], args.seed, add)
    if "relax" in only:
        relax_rows("1M", p["relax_frames"], args.seed, p["relax_fmax"], p["relax_steps"], add)
    if "md" in only:
        md_rows("1M", p["md_sizes"], p["md_steps"], add)
    if "phonons" in only:
        phonon_rows("1M", add)
    if "train" in only:
        train_rows("1M", p["train_frames"], args.seed, add)
    write(rows, info)
    return 0


TABLE_START, TABLE_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


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


if __name__ == "__main__":
    raise SystemExit(main())
