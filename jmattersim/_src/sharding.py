"""Many devices with JAX's own SPMD: the graph axis split across a 1-D mesh.

A padded batch is a whole set of graphs with their nodes, edges and triplets;
graphs never straddle devices. So a sharded step takes a *stack* of D padded
batches of one shape (D = devices in the mesh), places slice d on device d
(``NamedSharding(mesh, P("graphs"))``) and runs the unchanged single-batch
function on each with ``jax.shard_map``; parameters are replicated.

Several hosts: call ``jax.distributed.initialize()`` first on every host, build
the mesh over ``jax.devices()`` (all hosts' devices), and give every host the
same list of structures: each computes the stack, and JAX places on each host
the slices of its own devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "graphs"


def graph_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D device mesh for splitting batches along the graph axis.

    Pass it as ``mesh=`` to ``evaluate``, ``forward_batch`` or ``predict_file``:
    one padded batch per device (structures never straddle devices), parameters
    replicated. On several hosts, call ``jax.distributed.initialize()`` first.

    Args:
        devices: the devices (default ``jax.devices()``: every device of every
            host).

    Returns:
        A ``jax.sharding.Mesh`` with one axis, ``"graphs"``.
    """
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def stack(batches: Sequence[Any]) -> Any:
    """Stacks same-shape pytrees along a new leading (device) axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


def unstack(tree: Any, count: int) -> list[Any]:
    """The inverse of :func:`stack` (on host arrays)."""
    tree = jax.device_get(tree)
    return [jax.tree_util.tree_map(lambda x, k=k: x[k], tree) for k in range(count)]


def place(stacked: Any, mesh: Mesh) -> Any:
    """Puts slice d of every leaf on device d of the mesh."""
    return jax.device_put(stacked, NamedSharding(mesh, PartitionSpec(AXIS)))


@functools.lru_cache(maxsize=32)
def over_devices(fn: Callable[[Any, Any], Any], mesh: Mesh) -> Callable[[Any, Any], Any]:
    """``fn(params, batch) -> out`` made into ``(params, stacked) -> stacked out``:
    one batch per device, parameters replicated, compiled once per shape."""

    def block(params: Any, stacked: Any) -> Any:
        out = fn(params, jax.tree_util.tree_map(lambda x: x[0], stacked))
        return jax.tree_util.tree_map(lambda x: x[None], out)

    return jax.jit(
        jax.shard_map(
            block,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
            out_specs=PartitionSpec(AXIS),
        )
    )


def split_balanced(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``sizes`` dealt into ``parts`` groups of similar total size
    (largest first, each to the lightest group), each group in input order."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    load = [0] * parts
    for k in sorted(range(len(sizes)), key=lambda k: -sizes[k]):
        g = int(np.argmin(load))
        groups[g].append(k)
        load[g] += sizes[k]
    return [sorted(g) for g in groups]
