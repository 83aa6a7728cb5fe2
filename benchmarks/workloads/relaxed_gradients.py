"""relaxed_gradients: ``relax_fn`` (default arguments, float32) on a rattled
two-atom diamond Si cell with germanium mixed into one site: the gradient of the
relaxed volume in the composition against the forward relaxation alone, and
``jax.vmap`` over 8 compositions against one (best of 3, interleaved). Upstream
has neither; the baseline column holds jmattersim's own forward relaxation."""

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
    t0 = fractions[0]
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
    what = "Si2 primitive cell rattled (seed 1), Ge fraction on one site, float32"
    add(
        "relax_fn: gradient of the relaxed volume",
        name,
        "s",
        best["gradient"],
        best["forward"],
        f"{what}; baseline column: the forward relaxation alone ({int(one.steps)} BFGS steps, "
        f"converged {bool(one.converged)}); acceptance: at most 3x",
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
