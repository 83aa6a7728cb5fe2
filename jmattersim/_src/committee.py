"""Committees (ensembles): K models of one architecture, their variables stacked
along a leading member axis, evaluated together in one compiled call
(:func:`jmattersim._src.engine.run` vmaps the model over the members).

On disk a committee is a model directory (:mod:`jmattersim._src.checkpoint`)
whose ``config.json`` also says ``"committee": K`` and whose ``params/``
checkpoint holds the stacked variables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .checkpoint import (
    Model,
    cached_cast,
    check_params,
    read_meta,
    restore_params,
    write_directory,
)
from .config import M3GNetConfig


@dataclasses.dataclass(frozen=True)
class Committee:
    """K models of one architecture, evaluated together: the mean prediction and
    the spread (population standard deviation) across members, in one
    [`Predictions`][jmattersim.Predictions] (its ``_std`` fields; stress eV/Å³).

    Make one with [`stack_models`][jmattersim.train.stack_models] or
    [`load_committee`][jmattersim.train.load_committee]; the calculator, ``evaluate``
    and ``jmattersim predict`` take it wherever they take a
    [`Model`][jmattersim.Model].

    Attributes:
        config: the members' architecture.
        params: the Flax variables ``{"params", "constants"}``, every array with
            a leading member axis of length K.
        source: where the members came from (``members``: their sources;
            ``params_sha256``: a digest of the stacked variables).
    """

    config: M3GNetConfig
    params: Any
    source: dict = dataclasses.field(default_factory=dict, compare=False)
    _cast: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def size(self) -> int:
        """K, the number of members."""
        return int(np.shape(jax.tree_util.tree_leaves(self.params)[0])[0])

    def member(self, k: int) -> Model:
        """Member ``k`` as a plain model.

        Args:
            k: the member's index (negative counts from the end).

        Returns:
            The [`Model`][jmattersim.Model], with the member's own source.

        Raises:
            IndexError: ``k`` is not in ``range(size)``.
        """
        if not -self.size <= k < self.size:
            raise IndexError(f"member {k} of a committee of {self.size}")
        members = self.source.get("members")
        source = members[k] if isinstance(members, list) and len(members) == self.size else {}
        params = jax.tree_util.tree_map(lambda a: a[k], self.params)
        return Model(self.config, params, dict(source))

    def astype(self, dtype) -> Committee:
        """The same committee with every array a JAX array of ``dtype``; cached.

        Args:
            dtype (numpy dtype): e.g. ``jnp.float32``, or ``jnp.float64`` (needs
                ``jax_enable_x64``).

        Returns:
            The cast [`Committee`][jmattersim.train.Committee].
        """
        return cached_cast(self, dtype)


def params_digest(params: Any) -> str:
    """sha256 of the arrays of ``params`` (their paths, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.dtype}{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def stack_models(models: Sequence[Model]) -> Committee:
    """A committee of ``models`` (same architecture), in their order.

    Args:
        models: at least one [`Model`][jmattersim.Model], all with the same config.

    Returns:
        The [`Committee`][jmattersim.train.Committee].

    Raises:
        ValueError: no models, or a model's config or variables differ from the
            first's.
    """
    models = list(models)
    if not models:
        raise ValueError("stack_models: a committee needs at least one model")
    config = models[0].config
    for k, m in enumerate(models[1:], 1):
        if m.config != config:
            raise ValueError(
                f"stack_models: model {k} has config {m.config}, model 0 has {config}; "
                "a committee's members must share one architecture"
            )
    for k, m in enumerate(models):
        check_params(m.params, config, f"stack_models: model {k}")
    params = jax.tree_util.tree_map(
        lambda *xs: np.stack([np.asarray(x) for x in xs]), *(m.params for m in models)
    )
    source = {"members": [dict(m.source) for m in models], "params_sha256": params_digest(params)}
    return Committee(config, params, source)


def save_committee(committee: Committee, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes ``committee`` to the directory ``out`` atomically, as
    [`save_model`][jmattersim.save_model] writes a model: the stacked variables in
    ``params/``, and ``"committee": K`` added to ``config.json``.

    Args:
        committee: the [`Committee`][jmattersim.train.Committee].
        out: the directory to write; it may exist only with ``overwrite``
            (FileExistsError otherwise).
        overwrite: replace an existing ``out``.

    Returns:
        ``out``, as a ``Path``.
    """
    return write_directory(committee, out, overwrite, committee=committee.size)


def committee_size(path: str | os.PathLike) -> int | None:
    """K if ``path`` is a committee directory, None if it is anything else."""
    import json

    try:
        meta = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    size = meta.get("committee") if isinstance(meta, dict) else None
    return size if isinstance(size, int) else None


def read_committee(path: str | os.PathLike) -> Committee:
    """Reads a committee directory written by :func:`save_committee`; every
    member's variables are checked against the config."""
    path = Path(path).expanduser()
    meta, config = read_meta(path)
    size = meta.get("committee")
    if size is None:
        raise ValueError(
            f"{path} is a single model, not a committee: load it with jmattersim.load_model "
            "(or make a committee of several with jmattersim.train.stack_models)"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{path / 'config.json'} is corrupt: 'committee' is {size!r}")
    params = restore_params(path)
    for key, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != size:
            raise ValueError(
                f"{path}: parameter {jax.tree_util.keystr(key)} has shape {np.shape(leaf)}, "
                f"expected a leading member axis of {size}"
            )
    for k in range(size):
        check_params(
            jax.tree_util.tree_map(lambda a, k=k: a[k], params), config, f"{path} member {k}"
        )
    return Committee(config, params, meta.get("source", {}))
