"""The inverse-design workload: soft atom types, lattices and positions of a batch of
crystals optimised together in one compiled step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from jmattersim._src.batch_energy import batch_energy_fn
from jmattersim._src.neighbors import capacity_for

from conftest import padded, small_cell

# ---------------------------------------------------------- 6. inverse design


def test_jitted_inverse_design_loop(model):
    """Gradient steps on softmax logits, lattice and positions of 2 crystals at
    once (the inverse-design workload): energy falls over 100 steps, one compilation."""
    config = model.config
    crystals = [small_cell(), bulk("NaCl", "rocksalt", 5.64)]
    cap = capacity_for(crystals, config, headroom=2.0, batch_size=2, bucketed=True)
    g = padded(crystals, config, jnp.float32, n_node=8, n_graph=3)
    energies = batch_energy_fn(config, cap)
    allowed = jnp.zeros(config.num_species).at[0].set(-1e9)  # element 0 is not an element
    logits0 = 4.0 * g.nodes["atom_types"] + allowed
    n = sum(len(a) for a in crystals)

    def total(logits, pos, lat):
        at = jax.nn.softmax(logits, axis=-1)
        graph = g._replace(
            nodes={"atom_types": at, "positions": pos}, globals={**g.globals, "lattice": lat}
        )
        return jnp.sum(energies(model.params, graph)) / n

    traces = []

    @jax.jit
    def step(state):
        traces.append(1)  # runs once per trace, not per call
        value, grads = jax.value_and_grad(total, argnums=(0, 1, 2))(*state)
        rates = (0.5, 1e-3, 1e-3)
        return tuple(x - r * d for x, r, d in zip(state, rates, grads, strict=True)), value

    state = (logits0, g.nodes["positions"], g.globals["lattice"])
    values = []
    for _ in range(100):
        state, value = step(state)
        values.append(float(value))
    values = np.array(values)
    assert np.isfinite(values).all()
    assert len(traces) == 1
    assert values[-1] < values[0] - 1e-3
    assert np.mean(np.diff(values) <= 1e-6) >= 0.95, values
