"""MatterSim's M3GNet in Flax; the module tree mirrors ``mattersim.forcefield.m3gnet``.

The model maps a graph (atom types, edge vectors, bond and triplet indices) to
per-atom energies. Geometry (edge vectors from positions, lattice and image
shifts), strain and the sums over graphs live in :mod:`jmattersim._src.energy`.

Padding: edges and triplets carry masks. Padded entries get a stand-in length
before any square root and contribute zero to every sum, so values and
gradients stay finite whatever indices they hold.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..arrays import Array
from ..config import M3GNetConfig
from ..topology import Topology
from . import basis
from .layers import MLP, FastGatedMLP, GatedMLP, dense


class ModelInputs(NamedTuple):
    """What the network sees. N atoms, E edges, T triplets (any of them padding).

    atom_types:   (N, max_z + 1) one-hot or soft distribution over elements.
    edge_vectors: (E, 3) r_i - (r_j + n @ cell) in Å, for edge (i, j, n).
    topology:     the :class:`~jmattersim._src.topology.Topology`: senders i (the
                  centre of each edge, upstream ``edge_index[0]``), receivers j,
                  triplets (ij, ik) and their masks (its shifts are not used here).
    """

    atom_types: Array
    edge_vectors: Array
    topology: Topology


def masked_norm(v: Array, mask: Array) -> Array:
    """|v| along the last axis; 1 where mask is False, with a finite gradient there."""
    sq = jnp.sum(v * v, axis=-1)
    return jnp.sqrt(jnp.where(mask, sq, 1.0))


def segment_sum(data: Array, ids: Array, num: int) -> Array:
    return jax.ops.segment_sum(data, ids, num_segments=num)


class ThreeDInteraction(nn.Module):
    """Adds the three-body term to the edge features (upstream ``ThreeDInteraction``)."""

    config: M3GNetConfig
    fast: bool = True

    @nn.compact
    def __call__(self, edge_attr, three_basis, atom_attr, x: ModelInputs, edge_length):
        c = self.config
        ij, ik = x.topology.triplets[:, 0], x.topology.triplets[:, 1]
        gate = jax.nn.sigmoid(dense(c.max_n * c.max_l, True, "atom_mlp")(atom_attr))
        if self.fast:  # M3GNet applied the cutoff weight once, for all blocks
            three_basis = three_basis * gate[x.topology.senders[ik]]
        else:
            weight = (
                basis.polynomial_cutoff(edge_length[ij], c.threebody_cutoff)
                * basis.polynomial_cutoff(edge_length[ik], c.threebody_cutoff)
                * x.topology.triplet_mask
            )
            three_basis = three_basis * gate[x.topology.senders[ik]] * weight[:, None]
        e_ij_tilde = segment_sum(three_basis, ij, edge_attr.shape[0])
        gated = FastGatedMLP if self.fast else GatedMLP
        edge_gate = gated((c.units,), ("swish",), use_bias=False, name="edge_gate_mlp")
        return edge_attr + edge_gate(e_ij_tilde)


class MainBlock(nn.Module):
    """One interaction block: three-body, then bond update, then atom update.

    fast: the gated MLPs on concat(atom_i, atom_j, edge) apply their first
    layer's atom blocks once per atom and gather (:class:`FastGatedMLP`);
    False builds the concatenation per edge, as upstream does.
    """

    config: M3GNetConfig
    fast: bool = True

    @nn.compact
    def __call__(
        self, atom_attr, edge_attr, edge_attr_zero, three_basis, x: ModelInputs, edge_length
    ):
        c = self.config
        edge_attr = ThreeDInteraction(c, self.fast, name="three_body")(
            edge_attr, three_basis, atom_attr, x, edge_length
        )
        update = self._edge_gated_mlp("gated_mlp_edge", atom_attr, edge_attr, x)
        edge_attr = edge_attr + update * dense(c.units, False, "edge_layer_edge")(edge_attr_zero)
        message = self._edge_gated_mlp("gated_mlp_atom", atom_attr, edge_attr, x)
        message = message * jax.nn.silu(dense(c.units, False, "edge_layer_atom")(edge_attr_zero))
        message = message * x.topology.edge_mask[:, None]
        atom_attr = atom_attr + segment_sum(message, x.topology.senders, atom_attr.shape[0])
        return atom_attr, edge_attr

    def _edge_gated_mlp(
        self, name: str, atom_attr: Array, edge_attr: Array, x: ModelInputs
    ) -> Array:
        """A gated MLP over concat(atom_i, atom_j, edge) per edge: split (fast) or
        on the built concatenation (upstream's layout); the same variables."""
        dims, acts = (self.config.units, self.config.units), ("swish", "swish")
        if self.fast:
            return FastGatedMLP(dims, acts, name=name)(
                (atom_attr, x.topology.senders), (atom_attr, x.topology.receivers), edge_attr
            )
        return GatedMLP(dims, acts, name=name)(_concat_ije(atom_attr, edge_attr, x))


def _concat_ije(atom_attr: Array, edge_attr: Array, x: ModelInputs) -> Array:
    """concat(atom_attr[i], atom_attr[j], edge_attr) per edge (E, 2 d_atom + d_edge)."""
    return jnp.concatenate(
        [atom_attr[x.topology.senders], atom_attr[x.topology.receivers], edge_attr], axis=1
    )


class SmoothBesselBasis(nn.Module):
    """Radial basis of the edge lengths; holds upstream's ``rbf.*`` buffers."""

    config: M3GNetConfig

    @nn.compact
    def __call__(self, r: Array) -> Array:
        c = self.config
        consts = basis.smooth_bessel_constants(c.cutoff, c.max_n)
        return basis.smooth_bessel(r, _constants(self, consts, r.dtype))


class SphericalBasisLayer(nn.Module):
    """Three-body basis of (r_ik, cos theta_jik); holds upstream's ``sbf.*`` buffers."""

    config: M3GNetConfig

    @nn.compact
    def __call__(self, r: Array, cos_theta: Array, index: Array | None = None) -> Array:
        """r (T,) r_ik per triplet, or (E,) per edge with ``index`` (T,) = ik."""
        c = self.config
        consts = _constants(self, basis.spherical_basis_constants(c.cutoff), r.dtype)
        return basis.spherical_basis(r, cos_theta, consts, c.cutoff, c.max_n, c.max_l, index)


class AtomScaling(nn.Module):
    """Per-element scale and shift. For soft atom types, their expectations under
    the distribution (``soft``), or those of the most likely element."""

    num_species: int
    soft: bool = True

    @nn.compact
    def __call__(self, energies: Array, atom_types: Array) -> Array:
        dtype = energies.dtype
        scale = self.param("scale", nn.initializers.ones, (self.num_species,), dtype)
        shift = self.param("shift", nn.initializers.zeros, (self.num_species,), dtype)
        if not self.soft:
            hard = jax.nn.one_hot(jnp.argmax(atom_types, axis=-1), self.num_species, dtype=dtype)
            atom_types = jax.lax.stop_gradient(hard)
        return (atom_types @ scale) * energies + atom_types @ shift


class M3GNet(nn.Module):
    """Per-atom energies (N,) in eV, after the per-element scale and shift.

    Variables: ``params`` (the weights, ``normalizer/{scale,shift}`` included)
    and ``constants`` (the basis buffers, ``rbf/*`` and ``sbf/*``).

    fast: the optimised layout (:class:`FastGatedMLP`: first layers split by
    input block, atom blocks applied per atom then gathered; g and sigma
    stacks share a matmul; the three-body radial basis and cutoffs computed
    per edge and gathered per triplet); False is the reference, upstream's layout. Same
    variables, same values up to float rounding.
    remat: recompute each interaction block in the backward pass
    (``jax.checkpoint`` per block, the blocks run as a ``lax.scan``) instead of
    storing its intermediates: less memory for gradients, same values, some
    extra time.
    smooth_angles: differentiate through upstream's clamp of the angle cosine as
    through the identity (same values). Upstream's clamp has a zero derivative
    within 4.5e-4 rad of a straight angle; forces keep it (parity), exact second
    and third derivatives use this (no plateau at straight triplets).
    """

    config: M3GNetConfig
    soft_normalize: bool = True
    fast: bool = True
    remat: bool = False
    smooth_angles: bool = False

    @nn.compact
    def __call__(self, x: ModelInputs) -> Array:
        c = self.config
        edge_length = masked_norm(x.edge_vectors, x.topology.edge_mask)
        ij, ik = x.topology.triplets[:, 0], x.topology.triplets[:, 1]
        cos_jik = jnp.sum(x.edge_vectors[ij] * x.edge_vectors[ik], axis=1) / (
            edge_length[ij] * edge_length[ik]
        )
        # Upstream clamps (a guard for its acos), takes acos, and its basis takes cos
        # again: the same values, and the same forces (the clamp's zero gradient
        # within 4.5e-4 rad of a straight angle included). That zero gradient is a
        # plateau about 1e-3 Å wide at every straight triplet (perovskites, rock
        # salt), which would make exact Hessians miss its bending curvature:
        # smooth_angles keeps the clamped value with the identity's derivative.
        clamped = jnp.clip(cos_jik, -1.0 + 1e-7, 1.0 - 1e-7)
        if self.smooth_angles:
            cos_jik = cos_jik + jax.lax.stop_gradient(clamped - cos_jik)
        else:
            cos_jik = clamped

        atom_attr = MLP((c.units,), (None,), use_bias=False, name="atom_embedding")(x.atom_types)
        edge_attr_zero = SmoothBesselBasis(c, name="rbf")(edge_length)
        edge_attr = MLP((c.units,), ("swish",), use_bias=False, name="edge_encoder")(edge_attr_zero)
        sbf = SphericalBasisLayer(c, name="sbf")
        if self.fast:  # radial part and cutoffs once per edge, gathered per triplet;
            # the blocks' triplet weight (the same in every block) applied here, once
            three_basis = sbf(edge_length, cos_jik, ik)
            cut = basis.polynomial_cutoff(edge_length, c.threebody_cutoff)
            three_basis = three_basis * (cut[ij] * cut[ik] * x.topology.triplet_mask)[:, None]
        else:
            three_basis = sbf(edge_length[ik], cos_jik)
        blocks = [MainBlock(c, self.fast, name=f"graph_conv_{b}") for b in range(c.num_blocks)]
        if self.remat and not self.is_initializing():
            atom_attr, edge_attr = _remat_blocks(
                MainBlock(c, self.fast),
                [self.variables["params"][b.name] for b in blocks],
                atom_attr,
                edge_attr,
                edge_attr_zero,
                three_basis,
                x,
                edge_length,
            )
        else:
            for block in blocks:
                atom_attr, edge_attr = block(
                    atom_attr, edge_attr, edge_attr_zero, three_basis, x, edge_length
                )
        final_dims, final_acts = (c.units, c.units, 1), ("swish", "swish", None)
        if self.fast:
            final = FastGatedMLP(final_dims, final_acts, per_atom=True, name="final")
        else:
            final = GatedMLP(final_dims, final_acts, name="final")
        energies = final(atom_attr)[:, 0]
        return AtomScaling(c.num_species, self.soft_normalize, name="normalizer")(
            energies, x.atom_types
        )


def _remat_blocks(
    block: MainBlock, params: list, atom_attr: Array, edge_attr: Array, *shared
) -> tuple[Array, Array]:
    """The interaction blocks as one ``lax.scan`` over their stacked weights, its
    body under ``jax.checkpoint``: the backward pass recomputes each block inside
    its own loop iteration, so only one block's intermediates are ever live (a
    checkpointed block outside a loop leaves XLA free to recompute it early)."""
    stacked = jax.tree_util.tree_map(lambda *w: jnp.stack(w), *params)

    def body(carry, weights):
        return block.apply({"params": weights}, *carry, *shared), None

    carry, _ = jax.lax.scan(
        jax.checkpoint(body, prevent_cse=False), (atom_attr, edge_attr), stacked
    )
    return carry


def _constants(module: nn.Module, values: dict, dtype) -> dict[str, Array]:
    """Declares ``values`` in the ``constants`` collection; returns them in ``dtype``."""
    return {
        k: module.variable("constants", k, lambda v=v: jnp.asarray(v)).value.astype(dtype)
        for k, v in values.items()
    }


def init_params(config: M3GNetConfig, key: Array):
    """Random Flax variables of the right shapes for ``config`` (float32)."""
    e = 2
    topology = Topology(
        senders=jnp.zeros(e, jnp.int32),
        receivers=jnp.ones(e, jnp.int32),
        shifts=jnp.zeros((e, 3)),
        edge_mask=jnp.ones(e, bool),
        triplets=jnp.array([[0, 1]]),
        triplet_mask=jnp.ones(1, bool),
        overflow=jnp.asarray(False),
    )
    inputs = ModelInputs(jnp.zeros((2, config.num_species)), jnp.ones((e, 3)), topology)
    return M3GNet(config).init(key, inputs)
