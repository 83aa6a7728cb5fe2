"""The name table between upstream's ``state_dict`` and the Flax variables.

The Flax module tree mirrors upstream's, so one rule gives every name:

====================================================  ==============================================
torch key (``checkpoint["model"]``)                     Flax path (collection/module/.../leaf)
====================================================  ==============================================
``<a>.<b>.<k>.linear.weight``  (shape out x in)         ``params/<a>/<b>_<k>/kernel`` (in x out, .T)
``<a>.<b>.linear.bias``                                 ``params/<a>/<b>/bias``
``normalizer.scale``, ``normalizer.shift``              ``params/normalizer/scale``, ``shift``
``rbf.<buffer>``, ``sbf.<buffer>``                      ``constants/rbf/<buffer>``, ``.../sbf/...``
====================================================  ==============================================

for example ``graph_conv.2.gated_mlp_atom.sigma.1.linear.weight`` is
``params/graph_conv_2/gated_mlp_atom/sigma_1/kernel``. :func:`table` lists all of
them for a config (``python -m convert_weights --table``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import jax

from .config import M3GNetConfig

FlaxPath = tuple[str, ...]


def torch_key(path: FlaxPath) -> str:
    """Upstream state_dict key of the Flax variable at ``path``."""
    collection, *modules, leaf = path
    parts = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    if collection == "params" and leaf in ("kernel", "bias"):
        parts += ["linear", "weight" if leaf == "kernel" else "bias"]
    else:
        parts.append(leaf)
    return ".".join(parts)


def is_transposed(path: FlaxPath) -> bool:
    """torch Linear stores (out, in); Flax Dense stores (in, out)."""
    return path[-1] == "kernel"


def flax_shapes(config: M3GNetConfig) -> dict[FlaxPath, tuple[int, ...]]:
    """Every Flax variable of the model for ``config``, with its shape."""
    from .model import init_params

    abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {tuple(k.key for k in keys): tuple(leaf.shape) for keys, leaf in flat}


def table(config: M3GNetConfig) -> Iterator[tuple[str, str, tuple[int, ...], bool]]:
    """(torch key, Flax path, Flax shape, transposed) for every variable."""
    for path, shape in flax_shapes(config).items():
        yield torch_key(path), "/".join(path), shape, is_transposed(path)
