"""Dense building blocks mirroring upstream's ``m3gnet/modules/layers.py``.

Upstream wraps every ``nn.Linear`` in a one-layer module (``LinearLayer``,
``SwishLayer``, ``SigmoidLayer``) whose weights sit at ``<name>.linear.*``; here
each is one ``nn.Dense`` named ``<name>`` and the activation is applied by the
caller, so the torch key ``a.b.0.linear.weight`` becomes the Flax path
``a/b_0/kernel`` (see ``convert_weights.mapping``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jnp.ndarray

# Upstream disables TF32; full-precision float32 matmuls keep GPU results at parity.
PRECISION = jax.lax.Precision.HIGHEST

ACTIVATIONS: dict[str | None, Callable[[Array], Array]] = {
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    None: lambda x: x,
}


def dense(features: int, use_bias: bool, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, precision=PRECISION, name=name)


class MLP(nn.Module):
    """Stack of dense layers, ``mlp_0 .. mlp_{k-1}``, each followed by its activation."""

    out_dims: Sequence[int]
    activations: Sequence[str | None]
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, (dim, act) in enumerate(zip(self.out_dims, self.activations, strict=True)):
            x = ACTIVATIONS[act](dense(dim, self.use_bias, f"mlp_{i}")(x))
        return x


class GatedMLP(nn.Module):
    """g(x) * sigma(x): two stacks of equal shape; sigma's last activation is a sigmoid."""

    out_dims: Sequence[int]
    activations: Sequence[str | None]
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        g = x
        for i, (dim, act) in enumerate(zip(self.out_dims, self.activations, strict=True)):
            g = ACTIVATIONS[act](dense(dim, self.use_bias, f"g_{i}")(g))
        sigma_acts = list(self.activations[:-1]) + ["sigmoid"]
        s = x
        for i, (dim, act) in enumerate(zip(self.out_dims, sigma_acts, strict=True)):
            s = ACTIVATIONS[act](dense(dim, self.use_bias, f"sigma_{i}")(s))
        return g * s
