"""Long runs behind the jax-md acceptance figures (CPU; minutes each).

    python benchmarks/md_scaling.py scaling [--sizes 3 4 5 6 8 10] [--steps 3]
    python benchmarks/md_scaling.py nve     [--steps 1000] [--relaxed] [--dt 1.0] [--dtype float64]
    python benchmarks/md_scaling.py nvt     [--steps 2000]
    python benchmarks/md_scaling.py relax

The model is MatterSim's 1M architecture (3 blocks, 128 units) with the seeded random
weights of the test suite (``jmattersim.testing.genuine_checkpoint``: upstream's
M3Gnet, saved by upstream, converted), ``--arch small`` for the MD tests' small architecture, or
``--model PATH`` (a converted directory or a .pth).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
from ase.build import bulk


def random_model(cache: Path, arch: str = "1M"):
    """Upstream's M3Gnet of architecture ``arch`` with the test suite's seeded random
    weights (1M: MatterSim-v1.0.0-1M's shape; small: the MD/relax tests' model)."""
    import jmattersim
    from jmattersim.testing import genuine_checkpoint

    path = cache / f"random-{arch}.pth"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        genuine_checkpoint(path, arch)
    return jmattersim.load_model(path)


def si(reps: int, a: float = 5.43):
    return bulk("Si", "diamond", a, cubic=True).repeat(reps)


def scaling(model, sizes, steps):
    """Time of one NVE step (velocity Verlet + neighbour update) for Si supercells."""
    from jax_md import simulate, space

    from jmattersim.jax_md import atoms_to_jax_md, mattersim_neighbor_list

    print(
        f"{'atoms':>6} {'method':>10} {'ms/step':>10} {'us/atom/step':>13} {'compile s':>10}"
        "   (ms/step: fastest of the timed steps)"
    )
    rows = []
    for reps in sizes:
        atoms = si(reps)
        atoms.rattle(0.02, seed=0)
        R, box, species = atoms_to_jax_md(atoms)
        neighbor_fn, energy_fn = mattersim_neighbor_list(model, box, species, dr_threshold=0.25)
        _, shift = space.periodic_general(box, fractional_coordinates=True)
        init, apply = simulate.nve(energy_fn, shift, 1.0 * 0.09822694788464063)
        nbrs = neighbor_fn.allocate(R)
        state = jax.jit(init)(jax.random.PRNGKey(0), R, 0.0259, mass=28.0855, neighbor=nbrs)

        def step_fn(state, nbrs, apply=apply):
            state = apply(state, neighbor=nbrs)
            return state, nbrs.update(state.position)

        step = jax.jit(step_fn)

        t0 = time.perf_counter()
        state, nbrs = jax.block_until_ready(step(state, nbrs))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):  # the minimum: the machine may be shared
            t0 = time.perf_counter()
            state, nbrs = jax.block_until_ready(step(state, nbrs))
            times.append(time.perf_counter() - t0)
        dt = min(times)
        assert not bool(nbrs.did_buffer_overflow)
        n = len(atoms)
        rows.append((n, dt))
        print(
            f"{n:6d} {nbrs.method:>10} {dt * 1e3:10.1f} {dt / n * 1e6:13.1f} "
            f"{compile_s:10.1f}   (median {np.median(times) * 1e3:.1f} ms)",
            flush=True,
        )
    per_atom = np.array([t / n for n, t in rows])
    print(f"cost per atom, max/min over sizes: {per_atom.max() / per_atom.min():.2f}")


def nve(model, steps, a=5.43, relaxed=False, dt=1.0, dtypes=("float64", "float32")):
    """NVE of 64 Si at 300 K. relaxed: start from the model's own minimum (positions
    and cell relaxed from diamond at ``a``), as one would before MD."""
    from jmattersim import md

    for name in dtypes:
        with jax.enable_x64(name == "float64"):
            atoms = si(2, a)
            if relaxed:
                from jmattersim import relax

                atoms.rattle(0.01, seed=0)  # off the symmetric saddle, if it is one
                out = relax(model, atoms, fmax=1e-3, smax=1e-3, max_steps=3000)
                print(
                    f"relaxed: converged {out.info['relax_converged']} in "
                    f"{out.info['relax_steps']} steps, a = {out.cell.lengths()[0] / 2:.3f} A, "
                    f"cell angles {np.round(out.cell.angles(), 2)}",
                    flush=True,
                )
                atoms = out.copy()
                atoms.calc = None
            t0 = time.perf_counter()
            n_steps = int(round(steps / dt))
            _, log = md(
                model,
                atoms,
                n_steps,
                dt=dt,
                ensemble="nve",
                temperature=300.0,
                chunk=100,
                log_every=10,
                progress=False,
            )
            e = log["conserved"] / len(atoms)
            slope = np.polyfit(log["time_fs"], e, 1)[0] * log["time_fs"][-1]
            fifth = max(len(e) // 5, 2)
            print(
                f"NVE {name} {len(atoms)} Si (a = {a} A{', relaxed' if relaxed else ''}), "
                f"{steps} fs at {dt} fs: max-min E_tot {np.ptp(e):.2e} eV/atom, "
                f"|E(end)-E(0)| {abs(e[-1] - e[0]):.2e}, first vs last fifth "
                f"{abs(e[-fifth:].mean() - e[:fifth].mean()):.2e}, linear drift {slope:.2e} "
                f"eV/atom over the run, <T> {log['temperature'].mean():.0f} K, "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )


def nvt(model, steps):
    from jmattersim import md

    for ensemble in ("nvt_nose_hoover", "nvt_langevin"):
        atoms = si(2)
        _, log = md(
            model,
            atoms,
            steps,
            dt=1.0,
            ensemble=ensemble,
            temperature=600.0,
            tau_t=50.0,
            friction=0.02,
            chunk=100,
            log_every=10,
            progress=False,
        )
        half = log["temperature"][len(log["temperature"]) // 2 :]
        print(
            f"{ensemble} {len(atoms)} Si, {steps} fs at 600 K: mean T over 2nd half "
            f"{half.mean():.1f} K ({(half.mean() / 600 - 1) * 100:+.2f} %)",
            flush=True,
        )


def relax_figures(model):
    import ase.io

    from jmattersim import relax

    atoms = si(2)
    atoms.rattle(0.1, seed=2)
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + [[0.03, 0.01, 0], [0.01, -0.02, 0], [0, 0, 0.02]]),
        scale_atoms=True,
    )
    t0 = time.perf_counter()
    out = relax(model, atoms, fmax=0.01, smax=0.02, max_steps=2000)
    gpa = np.abs(out.get_stress(voigt=False)).max() / 0.006241509125883258
    print(
        f"Si 64 relax: converged {out.info['relax_converged']} in {out.info['relax_steps']} "
        f"steps, max |F| {np.abs(out.get_forces()).max():.2e} eV/A, max |sigma| {gpa:.3f} GPa, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    frames = ase.io.read(data / "mptrj-random-1k.xyz", ":")
    picks = [a for a in frames if len(a) == 4][:16]
    batched = relax(model, picks, fmax=0.01, smax=0.02, max_steps=2000)
    single = [relax(model, a, fmax=0.01, smax=0.02, max_steps=2000) for a in picks]
    done = [
        (b, s)
        for b, s in zip(batched, single, strict=True)
        if b.info["relax_status"] == s.info["relax_status"] == "converged"
    ]
    diff = max(
        (abs(b.get_potential_energy() - s.get_potential_energy()) / len(b) for b, s in done),
        default=float("nan"),
    )
    statuses = [b.info["relax_status"] for b in batched]
    print(
        f"16 frames batched vs single: max |dE| {diff:.2e} eV/atom over {len(done)} "
        f"converged; statuses {dict((k, statuses.count(k)) for k in set(statuses))}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["scaling", "nve", "nvt", "relax"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--lattice", type=float, default=5.43, help="Si lattice constant (nve)")
    parser.add_argument(
        "--relaxed", action="store_true", help="nve: relax positions and cell with the model first"
    )
    parser.add_argument("--dt", type=float, default=1.0, help="nve: time step, fs")
    parser.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        nargs="+",
        default=["float64", "float32"],
        help="nve: precisions to run",
    )
    parser.add_argument(
        "--arch",
        choices=["1M", "small"],
        default="1M",
        help="random-weights architecture when no --model is given",
    )
    parser.add_argument("--cache", default="/tmp/jmattersim-bench")
    args = parser.parse_args()
    import jmattersim

    if args.model:
        model = jmattersim.load_model(args.model)
    else:
        model = random_model(Path(args.cache), args.arch)
    if args.what == "scaling":
        scaling(model, args.sizes, args.steps or 3)
    elif args.what == "nve":
        nve(model, args.steps or 1000, args.lattice, args.relaxed, args.dt, args.dtype)
    elif args.what == "nvt":
        nvt(model, args.steps or 2000)
    else:
        relax_figures(model)


if __name__ == "__main__":
    main()
