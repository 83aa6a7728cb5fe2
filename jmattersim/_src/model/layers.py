"""Dense building blocks mirroring upstream's ``m3gnet/modules/layers.py``.

Upstream wraps every ``nn.Linear`` in a one-layer module (``LinearLayer``,
``SwishLayer``, ``SigmoidLayer``) whose weights sit at ``<name>.linear.*``; here
each is one ``nn.Dense`` named ``<name>`` and the activation is applied by the
caller, so the torch key ``a.b.0.linear.weight`` becomes the Flax path
``a/b_0/kernel`` (see ``jmattersim._src.torch_names``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..arrays import Array

# Upstream disables TF32; full-precision float32 matmuls keep GPU results at parity.
PRECISION = jax.lax.Precision.HIGHEST
# Per-atom products over more inputs than this are summed in blocks of this many,
# added pairwise: float32 rounding then grows with the block, not the whole length.
# Per-atom products are cheap (atoms, not edges), and their rounding reaches every
# edge of the atom: in the 5M layout (256-wide) this halves the largest float32
# energy error against float64 (1.7e-5 -> 6.8e-6 eV/atom over the parity set).
DOT_BLOCK = 128


def blocked_dot(x: Array, kernel: Array) -> Array:
    """``x @ kernel`` (.., K) x (K, M) at full precision, in blocks of
    :data:`DOT_BLOCK` along K summed pairwise."""
    k = x.shape[-1]
    parts = [
        jnp.dot(x[..., i : i + DOT_BLOCK], kernel[i : i + DOT_BLOCK], precision=PRECISION)
        for i in range(0, k, DOT_BLOCK)
    ]
    while len(parts) > 1:
        parts = [
            parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


ACTIVATIONS: dict[str | None, Callable[[Array], Array]] = {
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    None: lambda x: x,
}


def dense(features: int, use_bias: bool, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        precision=PRECISION,
        name=name,
        dot_general=_blocked_dot_general,
    )


def _blocked_dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None):
    """``nn.Dense``'s product through :func:`blocked_dot` (Dense contracts the
    last axis of x with the first of the kernel)."""
    (lhs, rhs), _ = dimension_numbers
    assert tuple(lhs) == (x.ndim - 1,) and tuple(rhs) == (0,), dimension_numbers
    return blocked_dot(x, kernel)


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


class DenseWeights(nn.Module):
    """The variables of an ``nn.Dense(features)`` on ``in_features`` inputs, same
    names, shapes and initialisers, returned instead of applied."""

    in_features: int
    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self) -> tuple[Array, Array | None]:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (self.in_features, self.features)
        )
        bias = (
            self.param("bias", nn.initializers.zeros_init(), (self.features,))
            if self.use_bias
            else None
        )
        return kernel, bias


Part = Array | tuple[Array, Array]


class FastGatedMLP(nn.Module):
    """:class:`GatedMLP` on ``concat(parts)`` without building the concatenation.

    Each part is an array (E, d_k) or a pair (table (N, d_k), index (E,)) that
    stands for ``table[index]``. The first layer splits its kernel by input
    rows: a gathered part is multiplied once per table row and then gathered
    (W x[index] = (W x)[index], exact): on edges, E x d_edge x d_out instead of
    E x (2 d_atom + d_edge) x d_out. Same variables as :class:`GatedMLP`, equal
    to it up to float rounding. (Sharing one matmul between the g and sigma
    stacks measured no faster on CPU, and doubles the width of the gathers.)
    """

    out_dims: Sequence[int]
    activations: Sequence[str | None]
    use_bias: bool = True
    per_atom: bool = False  # every input row is an atom: products in blocks (DOT_BLOCK)

    @nn.compact
    def __call__(self, *parts: Part) -> Array:
        tables = [p[0] if isinstance(p, tuple) else p for p in parts]
        widths = [t.shape[-1] for t in tables]
        dims, acts = list(self.out_dims), list(self.activations)
        sigma_acts = acts[:-1] + ["sigmoid"]
        in_dims = [sum(widths)] + dims[:-1]
        g = [
            DenseWeights(i, o, self.use_bias, name=f"g_{k}")()
            for k, (i, o) in enumerate(zip(in_dims, dims, strict=True))
        ]
        s = [
            DenseWeights(i, o, self.use_bias, name=f"sigma_{k}")()
            for k, (i, o) in enumerate(zip(in_dims, dims, strict=True))
        ]
        dtype = jnp.result_type(*tables, g[0][0])
        hg = _split_first_layer(parts, tables, g[0], dtype, self.per_atom)
        hs = _split_first_layer(parts, tables, s[0], dtype, self.per_atom)
        hg = ACTIVATIONS[acts[0]](hg)
        hs = ACTIVATIONS[sigma_acts[0]](hs)
        for k in range(1, len(dims)):
            hg = ACTIVATIONS[acts[k]](_affine(hg, g[k], dtype, self.per_atom))
            hs = ACTIVATIONS[sigma_acts[k]](_affine(hs, s[k], dtype, self.per_atom))
        return hg * hs


def _split_first_layer(parts, tables, weights, dtype, per_atom: bool) -> Array:
    """sum_k part_k @ kernel[rows of part k] (+ bias), gathering after the matmul
    (tables are per atom: their products in blocks)."""
    kernel, bias = weights
    kernel = kernel.astype(dtype)
    h = None
    start = 0
    for part, table in zip(parts, tables, strict=True):
        width = table.shape[-1]
        dot = blocked_dot if per_atom or isinstance(part, tuple) else _dot
        y = dot(table.astype(dtype), kernel[start : start + width])
        if isinstance(part, tuple):
            y = y[part[1]]
        h = y if h is None else h + y
        start += width
    return h if bias is None else h + bias.astype(dtype)


def _dot(x: Array, kernel: Array) -> Array:
    return jnp.dot(x, kernel, precision=PRECISION)


def _affine(x: Array, weights: tuple[Array, Array | None], dtype, per_atom: bool) -> Array:
    kernel, bias = weights
    y = (blocked_dot if per_atom else _dot)(x, kernel.astype(dtype))
    return y if bias is None else y + bias.astype(dtype)
