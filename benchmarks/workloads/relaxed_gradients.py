"""relaxed_gradients: ``relax_fn`` (default arguments, float32) on a rattled
two-atom diamond Si cell with germanium mixed into one site: the gradient of the
relaxed volume in the composition against the forward relaxation alone, and
``jax.vmap`` over 8 compositions against one (best of 3, interleaved), beside the
floor this CPU sets: one evaluation (energy, forces and the lattice's gradient,
``energy_fn``) of the same 8 compositions under ``jax.vmap`` against one.
Upstream has neither; the baseline column holds jmattersim's own functions."""

from __future__ import annotations

import numpy as np

from harness import interleaved, jm_model
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """8 compositions, germanium fractions drawn at random from [0, 0.05) with the seed."""
    relaxed_gradient_rows(name, bench.seed, bench.add)


def relaxed_gradient_rows(name: str, seed: int, add) -> None:
    import jax
    import jax.numpy as jnp
    from ase.build import bulk

    import jmattersim

    model = jm_model(name)
    atoms = bulk("Si", "diamond", 5.45)
    atoms.rattle(0.02, seed=1)
    capacity = jmattersim.capacity_for([atoms], model.config, headroom=3)
    relaxed = jmattersim.relax_fn(model.config, capacity)
    silicon = jax.nn.one_hot(atoms.numbers, model.config.num_species)
    germanium = jax.nn.one_hot(32, model.config.num_species)

    def volume(t):
        types = silicon.at[1].set((1 - t) * silicon[1] + t * germanium)
        out = relaxed(model.params, types, atoms.positions, atoms.cell.array)
        return jnp.abs(jnp.linalg.det(out.lattice)) / len(atoms), out

    fractions = jnp.asarray(np.random.default_rng(seed).uniform(0, 0.05, 8), jnp.float32)
    forward, gradient = jax.jit(volume), jax.jit(jax.grad(lambda t: volume(t)[0]))
    batched = jax.jit(jax.vmap(volume))
    energy = jmattersim.energy_fn(model.config, capacity)

    def evaluation(t):
        types = silicon.at[1].set((1 - t) * silicon[1] + t * germanium)
        return jax.value_and_grad(energy, argnums=(2, 3))(
            model.params,
            types,
            jnp.asarray(atoms.positions, jnp.float32),
            jnp.asarray(atoms.cell.array, jnp.float32),
        )

    evaluate_one, evaluate_many = jax.jit(evaluation), jax.jit(jax.vmap(evaluation))
    t0 = fractions[0]
    jax.block_until_ready((evaluate_one(t0), evaluate_many(fractions)))
    _, one = jax.block_until_ready(forward(t0))
    _, many = jax.block_until_ready(batched(fractions))
    jax.block_until_ready(gradient(t0))
    best = interleaved(
        {
            "forward": lambda: jax.block_until_ready(forward(t0)),
            "gradient": lambda: jax.block_until_ready(gradient(t0)),
            "vmap": lambda: jax.block_until_ready(batched(fractions)),
        },
        3,
    )
    repeat = 20  # evaluations are milliseconds: each timing is 20 calls
    evaluations = interleaved(
        {
            "one": lambda: [jax.block_until_ready(evaluate_one(t0)) for _ in range(repeat)],
            "many": lambda: [
                jax.block_until_ready(evaluate_many(fractions)) for _ in range(repeat)
            ],
        },
        3,
    )
    what = "Si2 primitive cell rattled (seed 1), Ge fraction on one site, float32"
    add(
        "relax_fn: gradient of the relaxed volume",
        name,
        "s",
        best["gradient"],
        best["forward"],
        f"{what}; baseline column: the forward relaxation alone ({int(one.steps)} BFGS "
        f"steps, fmax 1e-3 eV/Å, converged {bool(one.converged)}); acceptance: at most 3x",
        lower_is_better=True,
    )
    add(
        "relax_fn: jax.vmap over 8 compositions",
        name,
        "s",
        best["vmap"],
        best["forward"],
        f"{what}; baseline column: one composition; steps {np.asarray(many.steps).tolist()}, "
        f"{int(np.asarray(many.converged).sum())} of 8 converged; acceptance: at most 3x",
        lower_is_better=True,
    )
    add(
        "relax_fn: jax.vmap over 8 compositions, one evaluation (the floor)",
        name,
        "ms",
        evaluations["many"] / repeat * 1e3,
        evaluations["one"] / repeat * 1e3,
        f"{what}; energy_fn's energy and gradients at the start, 8 compositions under "
        "jax.vmap vs one; baseline column: one composition. A relaxation of 8 cannot cost "
        "less than this ratio times its steps here",
        lower_is_better=True,
    )
