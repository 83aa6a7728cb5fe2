"""jmattersim against upstream MatterSim (PyTorch), side by side, on this machine.

    python benchmarks/run.py            # the full suite (tens of minutes on 2 cores)
    python benchmarks/run.py --quick    # a few minutes: fewer frames, steps, configs

Workloads, each for the 1M and 5M layouts (seeded random weights in genuine
checkpoints written by upstream's ``Potential.save``, converted by jmattersim):

a. energy + forces + stress over the frames of ``mptrj-random-1k.xyz``, graph
   building included: ``jmattersim.evaluate`` against upstream's
   ``Potential.predict_properties`` on its ``build_dataloader``. Compile time apart.
b. the seed fork's workload, batches of 16 MPtrj frames, graphs included:
   energy and its gradient in atom types, positions and lattice; and the
   gradient (same three) of a loss sum |F|^2 + sum |stress|^2. Upstream: its
   ``M3Gnet`` driven by torch autograd on the same inputs.
c. MD steps per second, Si supercells (216, 1000, 4096 atoms), velocity Verlet at
   1 fs: ASE driving upstream's ``MatterSimCalculator``, against a jitted jmattersim
   step on a fixed host-built topology (energy, forces, update), ASE driving
   jmattersim's calculator, and ``jmattersim.md`` (jax-md) where importable.
d. peak memory: resident-set high-water of a fresh process per workload, and
   XLA's buffer assignment for the remat option (gradient of a force loss,
   1000-atom cell, with and without ``jax.checkpoint`` per block).

Timings are interleaved (jmattersim, upstream, jmattersim, ...) and the best
repetition is kept. Results: the markdown table on stdout and in
``benchmarks/results.md``, raw numbers in ``results.json``, a plot in ``results.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
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
DATA = Path(os.environ.get("JMATTERSIM_SHARED", REPO.parent / "shared")) / "data" / \
    "mptrj-random-1k.xyz"
WORK = Path(tempfile.gettempdir()) / "jmattersim-bench"
CONFIGS = {"1M": {"num_blocks": 3, "units": 128}, "5M": {"num_blocks": 4, "units": 256}}
SEED_BATCH = 16

sys.path.insert(0, str(REPO / "tests"))  # upstream.py: genuine checkpoints
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- setup

def checkpoint(name: str) -> Path:
    """A genuine upstream checkpoint with seeded random weights (made once)."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"random-{name}.pth"
    if not path.exists():
        import upstream

        upstream.make_checkpoint(path, list(CONFIGS).index(name), **CONFIGS[name])
    return path


@functools.cache
def jm_model(name: str):
    from convert_weights.convert import convert_checkpoint

    return convert_checkpoint(checkpoint(name))


@functools.cache
def up_potential(name: str):
    import upstream

    return upstream.load_potential(checkpoint(name))


@functools.cache
def frames(count: int | None = None) -> list:
    import ase.io

    atoms = ase.io.read(DATA, index=":")
    return atoms if count is None else atoms[:count]


def si_supercell(n_atoms: int, seed: int = 0):
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    reps = round((n_atoms / 8) ** (1 / 3))
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps)
    assert len(atoms) == n_atoms, len(atoms)
    atoms.rattle(0.02, seed=seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    return atoms


def best_of(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best wall time of each function, the functions taking turns."""
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


# ------------------------------------------------------------------ matmul rate

def matmul_rate() -> dict[str, float]:
    """float32 GFLOP/s of this CPU on the model's matmul shapes (edges x units)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for e, k, m in [(32768, 128, 128), (32768, 256, 256)]:
        a = jnp.ones((e, k), jnp.float32)
        b = jnp.ones((k, m), jnp.float32)
        f = jax.jit(lambda a, b: a @ b)
        jax.block_until_ready(f(a, b))
        t = best_of(lambda f=f, a=a, b=b: jax.block_until_ready(f(a, b)), 10)
        out[f"{e}x{k}x{m}"] = 2 * e * k * m / t / 1e9
    return out


# ------------------------------------------------------------------- a. throughput

def jm_capacity():
    from jmattersim.evaluate import Capacity

    # MPtrj averages ~10 triplets per edge: room for both fills the edge axis
    return Capacity(nodes=1024, edges=32768, triplets=360448, graphs=33)


def jm_throughput(name: str, atoms: list) -> dict:
    import jax

    from jmattersim.calculator import predict_jit
    from jmattersim.evaluate import evaluate
    from jmattersim.graph import batch_graphs, structure_graph

    model = jm_model(name)
    cap = jm_capacity()
    g = [structure_graph(a, model.config) for a in atoms[:4]]
    batch = batch_graphs(g, model.config, cap.nodes, cap.edges, cap.triplets, cap.graphs)
    t = time.perf_counter()
    compiled = predict_jit.lower(model.config, model.params, batch).compile()
    compile_s = time.perf_counter() - t
    evaluate(model, atoms[:4], cap)  # fills jit's cache for this shape
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops_per_batch = float(cost.get("flops", float("nan")))
    run = functools.partial(evaluate, model, atoms, cap)
    from jmattersim.evaluate import pack

    n_batches = len(list(pack([structure_graph(a, model.config) for a in atoms], cap)))
    return {"run": run, "compile_s": compile_s, "flops": flops_per_batch * n_batches,
            "batches": n_batches, "jax_version": jax.__version__}


def up_throughput(name: str, atoms: list) -> Callable[[], object]:
    from mattersim.datasets.utils.build import build_dataloader

    pot = up_potential(name)

    def run():
        loader = build_dataloader(atoms, model_type="m3gnet", cutoff=5.0, threebody_cutoff=4.0,
                                  batch_size=SEED_BATCH, only_inference=True)
        return pot.predict_properties(loader, include_forces=True, include_stresses=True)

    return run


# ----------------------------------------------------------- b. the seed's workload

def jm_seed(name: str, atoms: list, loss: bool) -> tuple[Callable[[], object], float]:
    """Energy + gradients (or the gradient of a force-and-stress loss) in atom
    types, positions and lattice, batches of 16 frames; graphs built each run."""
    import jax
    import jax.numpy as jnp
    import jraph

    from jmattersim.energy import batch_topology, energies
    from jmattersim.graph import batch_graphs, bucket, structure_graph

    model = jm_model(name)
    config, params = model.config, model.params
    chunks = [atoms[i:i + SEED_BATCH] for i in range(0, len(atoms), SEED_BATCH)]
    graphs = [structure_graph(a, config) for a in atoms]
    sizes = [[graphs[i + k] for k in range(len(c))]
             for i, c in zip(range(0, len(atoms), SEED_BATCH), chunks, strict=True)]
    shape = (bucket(max(sum(g.n_node for g in s) for s in sizes)),
             bucket(max(sum(g.n_edge for g in s) for s in sizes)),
             bucket(max(sum(g.n_triplet for g in s) for s in sizes)), SEED_BATCH + 1)

    def fn(batch):
        g = batch.graph
        topo = batch_topology(batch)
        real = jraph.get_graph_padding_mask(g)

        def total(at, pos, lat):
            e = energies(config, params, at, pos, lat, g.n_node, topo)
            return jnp.sum(jnp.where(real, e, 0.0)), e

        if not loss:
            (_, e), grads = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
                g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"])
            return e, grads

        def force_stress_loss(at, pos, lat):
            def of_strain(p, eps):
                e = energies(config, params, at, p, lat, g.n_node, topo, eps)
                return jnp.sum(jnp.where(real, e, 0.0))

            de_dr, de_deps = jax.grad(of_strain, argnums=(0, 1))(pos, jnp.zeros_like(lat))
            volume = jnp.abs(jnp.linalg.det(lat))
            stress = de_deps / volume[:, None, None]
            return jnp.sum(de_dr**2) + jnp.sum(jnp.where(real[:, None, None], stress, 0.0) ** 2)

        return jax.grad(force_stress_loss, argnums=(0, 1, 2))(
            g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"])

    jitted = jax.jit(fn)

    def batches():
        for c in chunks:
            yield batch_graphs([structure_graph(a, config) for a in c], config, *shape)

    first = next(batches())
    t = time.perf_counter()
    jax.block_until_ready(jitted(first))
    compile_s = time.perf_counter() - t

    def run():
        out = None
        for b in batches():
            out = jitted(b)
        return jax.block_until_ready(out)

    return run, compile_s


def up_seed(name: str, atoms: list, loss: bool) -> Callable[[], object]:
    import torch
    from mattersim.forcefield.potential import batch_to_dict
    from torch_geometric.data import Batch

    import upstream

    model = up_potential(name).model
    args = model.model_args
    chunks = [atoms[i:i + SEED_BATCH] for i in range(0, len(atoms), SEED_BATCH)]

    def one(chunk):
        data = [upstream.graph_data(a, args)[0] for a in chunk]
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
            stress = de_deps / torch.abs(torch.linalg.det(cell))[:, None, None]
            value = (de_dr**2).sum() + (stress**2).sum()
            return torch.autograd.grad(value, [atom_types, pos, cell])
        finally:
            del model.one_hot_atoms

    def run():
        for c in chunks:
            one(c)

    return run


# ------------------------------------------------------------------------ c. MD

def jm_md_step(name: str, atoms, steps: int) -> tuple[Callable[[], object], float]:
    """Velocity Verlet on a fixed host-built topology: one jitted call per step."""
    import jax
    import jax.numpy as jnp
    from ase import units

    from jmattersim.energy import batch_topology, energies
    from jmattersim.graph import batch_graphs, structure_graph

    model = jm_model(name)
    config, params = model.config, model.params
    batch = jax.tree_util.tree_map(jnp.asarray,
                                   batch_graphs([structure_graph(atoms, config)], config))
    g = batch.graph
    topo = batch_topology(batch)
    n = len(atoms)
    mass = jnp.asarray(np.concatenate([atoms.get_masses(), np.ones(g.n_node.sum() - n)]),
                       jnp.float32)[:, None]
    dt = 1.0 * units.fs

    def energy(pos):
        return energies(config, params, g.nodes["atom_types"], pos, g.globals["lattice"],
                        g.n_node, topo)[0]

    def forces(pos):
        return -jax.grad(energy)(pos)

    @jax.jit
    def step(pos, mom, f):
        mom = mom + 0.5 * dt * f
        pos = pos + dt * mom / mass
        f = forces(pos)
        mom = mom + 0.5 * dt * f
        return pos, mom, f

    pos = jnp.asarray(g.nodes["positions"])
    mom = jnp.zeros_like(pos).at[:n].set(atoms.get_momenta())
    t = time.perf_counter()
    f0 = jax.jit(forces)(pos)
    state = jax.block_until_ready(step(pos, mom, f0))
    compile_s = time.perf_counter() - t

    def run():
        p, m, f = state
        for _ in range(steps):
            p, m, f = step(p, m, f)
        return jax.block_until_ready(p)

    return run, compile_s


def ase_md(calc, atoms, steps: int) -> Callable[[], object]:
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    dyn.run(1)  # warm-up: first call (jmattersim: compile)
    return lambda: dyn.run(steps)


def jm_md_jaxmd(name: str, atoms, steps: int) -> tuple[Callable[[], object], float]:
    """jax-md: ``simulate.nve`` on ``mattersim_neighbor_list`` (the list updated every
    step, skin 0.25 Å as ``jmattersim.md``), one jitted call per step."""
    import jax
    from ase import units
    from jax_md import simulate, space

    from jmattersim.jax_md import atoms_to_jax_md, mattersim_neighbor_list

    model = jm_model(name)
    R, box, species = atoms_to_jax_md(atoms)
    neighbor_fn, energy_fn = mattersim_neighbor_list(model, box, species, dr_threshold=0.25)
    _, shift = space.periodic_general(box, fractional_coordinates=True)
    init, apply = simulate.nve(energy_fn, shift, 1.0 * units.fs)
    nbrs = neighbor_fn.allocate(R)
    state = init(jax.random.PRNGKey(0), R, units.kB * 300, mass=atoms.get_masses()[:, None],
                 neighbor=nbrs)

    @jax.jit
    def step(state, nbrs):
        state = apply(state, neighbor=nbrs)
        return state, nbrs.update(state.position)

    t = time.perf_counter()
    start = jax.block_until_ready(step(state, nbrs))
    compile_s = time.perf_counter() - t

    def run():
        s, nb = start
        for _ in range(steps):
            s, nb = step(s, nb)
        assert not bool(nb.did_buffer_overflow)
        return jax.block_until_ready(s)

    return run, compile_s


# ----------------------------------------------------------------- d. memory

def peak_rss_child(workload: str, impl: str, name: str, quick: bool) -> float | None:
    """Peak resident set (MiB) of a fresh process running one workload once."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", workload, impl, name]
    if quick:
        cmd.append("--quick")
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)["peak_mib"]
    print(f"  memory child {workload}/{impl}/{name} failed:\n{res.stderr[-2000:]}",
          file=sys.stderr)
    return None


def child(workload: str, impl: str, name: str, quick: bool) -> None:
    """Runs one workload once in this (fresh) process; prints its peak RSS."""
    sizes = plan(quick)
    if workload == "a":
        atoms = frames(sizes["mem_frames"])
        run = (jm_throughput(name, atoms)["run"] if impl == "jm" else up_throughput(name, atoms))
    elif workload in ("b1", "b2"):
        atoms = frames(SEED_BATCH)
        run = (jm_seed(name, atoms, workload == "b2")[0] if impl == "jm"
               else up_seed(name, atoms, workload == "b2"))
    elif workload == "c":
        atoms = si_supercell(1000)
        if impl == "jm":
            run = jm_md_step(name, atoms, 2)[0]
        else:
            from mattersim.forcefield.potential import MatterSimCalculator

            run = ase_md(MatterSimCalculator(up_potential(name), device="cpu"), atoms, 2)
    else:
        raise ValueError(workload)
    run()
    print(json.dumps({"peak_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (VmHWM; ``ru_maxrss`` would
    carry over the parent's through fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def remat_memory(name: str, n_atoms: int = 1000) -> dict:
    """XLA's buffers (MiB: temporaries + arguments + outputs) with and without
    remat on a Si cell, for the forces pass (-dE/dr) and for the gradient of a
    force loss sum |F|^2 in positions and weights; times and the largest
    relative difference of the results."""
    import jax
    import jax.numpy as jnp

    from jmattersim.energy import batch_topology, energies
    from jmattersim.graph import batch_graphs, structure_graph

    model = jm_model(name)
    config, params = model.config, model.params
    atoms = si_supercell(n_atoms)
    batch = jax.tree_util.tree_map(jnp.asarray,
                                   batch_graphs([structure_graph(atoms, config)], config))
    g = batch.graph
    topo = batch_topology(batch)
    pos = g.nodes["positions"]

    def energy(p, w, remat):
        return energies(config, w, g.nodes["atom_types"], p, g.globals["lattice"], g.n_node,
                        topo, remat=remat)[0]

    def forces(p, w, remat):
        return -jax.grad(energy)(p, w, remat)

    def force_loss_grad(p, w, remat):
        return jax.grad(lambda p, w: jnp.sum(forces(p, w, remat) ** 2), argnums=(0, 1))(p, w)

    out = {"edges": int(g.n_edge[0])}
    for label, fn in (("forces", forces), ("force_loss_grad", force_loss_grad)):
        results = {}
        for remat in (False, True):
            compiled = jax.jit(functools.partial(fn, remat=remat)).lower(pos, params).compile()
            mem = compiled.memory_analysis()
            key = f"{label}_{'remat' if remat else 'plain'}"
            out[key] = (mem.temp_size_in_bytes + mem.output_size_in_bytes
                        + mem.argument_size_in_bytes) / 2**20
            results[remat] = jax.tree_util.tree_leaves(compiled(pos, params))
            out[f"time_{key}"] = best_of(
                lambda c=compiled: jax.block_until_ready(c(pos, params)), 2)
        scale = max(float(jnp.abs(a).max()) for a in results[False])
        out[f"{label}_max_rel_diff"] = max(
            float(jnp.abs(a - b).max()) for a, b in zip(results[False], results[True],
                                                        strict=True)) / max(scale, 1.0)
    return out


# -------------------------------------------------------------------------- driver

def plan(quick: bool) -> dict:
    return {
        "configs": ["1M", "5M"],
        "frames": 96 if quick else None,  # None: all 1000
        "mem_frames": 64,
        "seed_frames": 32 if quick else 64,  # b1
        "seed_loss_frames": {"1M": 16, "5M": 16} if quick else {"1M": 32, "5M": 16},  # b2
        "md_sizes": [216, 1000] if quick else [216, 1000, 4096],
        "md_steps": {216: 5, 1000: 3, 4096: 2} if quick else {216: 10, 1000: 5, 4096: 2},
        "md_configs": ["1M"] if quick else ["1M", "5M"],
        "md_max_atoms_5M": 1000,
        "jaxmd_max_atoms": 1000,
        "reps": 2,
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
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, jax {jax.__version__} "
            f"({jax.default_backend()}), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); load average at start "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, steps and sizes")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS runs")
    parser.add_argument("--only", nargs="*", default=None, help="workloads: a b c d")
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "IMPL", "CONFIG"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.quick)
        return 0
    p = plan(args.quick)
    only = set(args.only or "abcd")
    rows: list[dict] = []
    previous = HERE / "results.json"
    if args.only and previous.exists():  # a partial rerun replaces its own rows only
        rows = json.loads(previous.read_text())["rows"]
    info = {"machine": machine(), "quick": args.quick}
    print(f"machine: {info['machine']}", flush=True)
    info["matmul_gflops"] = matmul_rate()
    print(f"float32 matmul GFLOP/s: {info['matmul_gflops']}", flush=True)

    def add(workload, config, unit, jm, up, note="", higher_is_better=True, jm_impl=""):
        ratio = jm / up if up else float("nan")
        rows[:] = [r for r in rows if (r["workload"], r["config"], r["jm_impl"])
                   != (workload, config, jm_impl)]
        rows.append({"workload": workload, "config": config, "unit": unit, "jmattersim": jm,
                     "upstream": up, "ratio": ratio, "note": note,
                     "higher_is_better": higher_is_better, "jm_impl": jm_impl})
        print(f"  {workload} [{config}] {jm_impl}: jmattersim {jm:.3g} {unit}, upstream "
              f"{up:.3g} {unit}, ratio {ratio:.2f} {note}", flush=True)
        write(rows, info, quiet=True)  # partial results survive an interrupted run

    for name in p["configs"]:
        if "a" in only:
            atoms = frames(p["frames"])
            jm = jm_throughput(name, atoms)
            up = up_throughput(name, atoms)
            t = interleaved({"jm": jm["run"], "up": up}, p["reps"])
            n = len(atoms)
            achieved = jm["flops"] / t["jm"] / 1e9
            add("a. E+F+S throughput", name, "frames/s", n / t["jm"], n / t["up"],
                f"{n} frames; compile {jm['compile_s']:.1f} s apart; "
                f"{achieved:.1f} GFLOP/s achieved (XLA count, padding included)")
            info[f"a_{name}"] = {"compile_s": jm["compile_s"], "achieved_gflops": achieved,
                                 "batches": jm["batches"], "flops": jm["flops"]}
        if "b" in only:
            for loss, label in ((False, "b1. seed: E + grad(types, pos, lattice)"),
                                (True, "b2. seed: grad of force+stress loss")):
                atoms = frames(p["seed_loss_frames"][name] if loss else p["seed_frames"])
                run, compile_s = jm_seed(name, atoms, loss)
                t = interleaved({"jm": run, "up": up_seed(name, atoms, loss)},
                                1 if loss else p["reps"])
                n = len(atoms)
                add(label, name, "frames/s", n / t["jm"], n / t["up"],
                    f"{n} frames, batches of {SEED_BATCH}; compile {compile_s:.1f} s apart")
    if "c" in only:
        from mattersim.forcefield.potential import MatterSimCalculator

        from jmattersim.calculator import MatterSimCalculator as JmCalculator

        for name in p["md_configs"]:
            for size in p["md_sizes"]:
                if name != "1M" and size > p["md_max_atoms_5M"]:
                    continue
                atoms = si_supercell(size)
                steps = p["md_steps"][size]
                up_calc = MatterSimCalculator(up_potential(name), device="cpu")
                jit_run, compile_s = jm_md_step(name, atoms, steps)
                fns = {"jm": jit_run, "up": ase_md(up_calc, atoms, steps)}
                if size <= 1000:
                    fns["jm_ase"] = ase_md(JmCalculator(jm_model(name)), atoms, steps)
                t = interleaved(fns, p["reps"] if size < 4096 else 1)
                add("c. MD steps/s", f"{name}, {size} atoms", "steps/s", steps / t["jm"],
                    steps / t["up"], f"compile {compile_s:.1f} s apart; fixed topology",
                    jm_impl="jit step")
                if "jm_ase" in t:
                    add("c. MD steps/s", f"{name}, {size} atoms", "steps/s",
                        steps / t["jm_ase"], steps / t["up"], "graph rebuilt every step",
                        jm_impl="ASE + jm calculator")
                if name == "1M" and size <= p["jaxmd_max_atoms"]:
                    run3, compile3 = jm_md_jaxmd(name, atoms, steps)
                    t3 = best_of(run3, p["reps"])
                    add("c. MD steps/s", f"{name}, {size} atoms", "steps/s", steps / t3,
                        steps / t["up"], f"compile {compile3:.1f} s apart; neighbour list "
                        "updated every step", jm_impl="jax-md step")
    if "d" in only:
        rm = remat_memory("1M")
        info["remat"] = rm
        for label, title in (("forces", "forces pass"),
                             ("force_loss_grad", "grad of force loss (pos, weights)")):
            add(f"d. remat: {title}, Si 1000", "1M", "MiB (XLA buffers)",
                rm[f"{label}_remat"], rm[f"{label}_plain"],
                f"ratio remat / plain; time {rm[f'time_{label}_remat']:.2f} s vs "
                f"{rm[f'time_{label}_plain']:.2f} s; max rel. diff "
                f"{rm[f'{label}_max_rel_diff']:.1e}",
                higher_is_better=False, jm_impl="remat vs plain")
        if not args.no_memory:
            jobs = [("a", n) for n in p["configs"]] + [("b1", "1M"), ("b2", "1M"), ("c", "1M")]
            for workload, name in jobs:
                jm = peak_rss_child(workload, "jm", name, args.quick)
                up = peak_rss_child(workload, "up", name, args.quick)
                if jm and up:
                    add(f"d. peak RSS, workload {workload}", name, "MiB", jm, up,
                        "fresh process, one run", higher_is_better=False)
    write(rows, info)
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| workload | config | jmattersim | upstream | jmattersim / upstream | notes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        jm = f"{r['jmattersim']:.3g} {r['unit']}"
        if r["jm_impl"]:
            jm += f" ({r['jm_impl']})"
        lines.append(f"| {r['workload']} | {r['config']} | {jm} | {r['upstream']:.3g} "
                     f"{r['unit']} | **{r['ratio']:.2f}×** | {r['note']} |")
    return "\n".join(lines)


def write(rows: list[dict], info: dict, quiet: bool = False) -> None:
    mode = "--quick" if info["quick"] else "full"
    md = [f"`python benchmarks/run.py` ({mode} run). Machine: {info['machine']}.", "",
          "float32 matmul (jax, jit): "
          + ", ".join(f"{k}: {v:.0f} GFLOP/s" for k, v in info["matmul_gflops"].items()),
          "", table(rows), "",
          "Speed rows: ratio > 1 means jmattersim is faster. Memory rows: ratio < 1 means "
          "jmattersim (or remat) uses less.", ""]
    text = "\n".join(md)
    if not quiet:
        print("\n" + text)
    (HERE / "results.md").write_text(text)
    (HERE / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2,
                                                  default=str))
    plot(rows, HERE / "results.png")


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    speed = [r for r in rows if r["higher_is_better"]]
    memory = [r for r in rows if not r["higher_is_better"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * max(len(speed), len(memory), 4) + 1.5),
                             gridspec_kw={"width_ratios": [3, 2]})
    for ax, group, title in ((axes[0], speed, "speed, jmattersim / upstream (>1: faster)"),
                             (axes[1], memory, "memory, jmattersim / upstream (<1: less)")):
        labels = [f"{r['workload']} [{r['config']}]" + (f" {r['jm_impl']}" if r["jm_impl"]
                                                          else "") for r in group]
        ax.barh(range(len(group)), [r["ratio"] for r in group], color="tab:blue")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(range(len(group)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
