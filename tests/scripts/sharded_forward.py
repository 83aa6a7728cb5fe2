"""Run with 4 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4):
forward_batch split over the devices against one device. Prints a JSON report."""

import json
import sys

import ase.io
import jax
import numpy as np

import jmattersim
from jmattersim._src import sharding

model_dir, data = sys.argv[1], sys.argv[2]
frames = ase.io.read(data, index=":40")[::3]  # 14 frames of varied sizes
model = jmattersim.load_model(model_dir)

seen = {"placed": [], "results": []}
place, unstack = sharding.place, sharding.unstack


def spy_place(tree, mesh):
    out = place(tree, mesh)
    seen["placed"].append(out)
    return out


def spy_unstack(tree, count):
    seen["results"].append(tree)
    return unstack(tree, count)


sharding.place, sharding.unstack = spy_place, spy_unstack
mesh = sharding.graph_mesh()
kw = dict(include_forces=True, include_stresses=True)
split = jmattersim.forward_batch(model, frames, mesh=mesh, **kw)
single = jmattersim.forward_batch(model, frames, **kw)


def layout(tree):
    rows = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if not isinstance(leaf, jax.Array) or leaf.ndim == 0:
            continue
        rows.append(
            {
                "spec": [str(a) for a in leaf.sharding.spec],
                "devices": sorted(str(s.device) for s in leaf.addressable_shards),
                "shard_rows": sorted({s.data.shape[0] for s in leaf.addressable_shards}),
                "rows": leaf.shape[0],
            }
        )
    return rows


report = {
    "devices": len(jax.devices()),
    "mesh": mesh.size,
    "inputs": layout(seen["placed"]),
    "outputs": layout(seen["results"]),
    "max_abs": {
        k: float(np.abs(np.asarray(split[k]) - np.asarray(single[k])).max()) for k in single
    },
    "scale": {k: float(np.abs(np.asarray(single[k])).max()) for k in single},
}
print("REPORT " + json.dumps(report))
