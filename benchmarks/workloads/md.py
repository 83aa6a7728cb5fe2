"""md: ASE's velocity Verlet driving each calculator, and a jitted jax-md step."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from harness import interleaved, jm_model, up_potential
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """Si 216 and 1000 atoms, 5 steps (216 atoms, 3 steps with ``--quick``)."""
    sizes, steps = ([216], 3) if bench.quick else ([216, 1000], 5)
    md_rows(name, sizes, steps, bench.add)


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
            "jitted jax-md NVE step, list checked every step (rebuilt past half the "
            "skin), against upstream through ASE",
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
