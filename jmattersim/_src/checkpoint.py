"""Converted models on disk: an Orbax checkpoint plus ``config.json``.

Below the conversion (``convert_weights``) and the name resolution
(:mod:`jmattersim._src.io`): nothing here reads ``.pth`` files or downloads.

Layout of a model directory::

    config.json   {"format": "jmattersim", "model_args": {...}, "source": {...}}
    params/       Orbax checkpoint of the Flax variables {"params", "constants"}

A committee directory (:mod:`jmattersim._src.committee`) is the same with
``"committee": K`` in ``config.json`` and a leading member axis K on every array.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import programs
from .config import M3GNetConfig
from .model import init_params

FORMAT = "jmattersim"


@dataclasses.dataclass(frozen=True)
class Model:
    """A converted MatterSim model: its config and its Flax variables.

    Make one with [`load_model`][jmattersim.load_model] (or
    [`init_model`][jmattersim.testing.init_model]); every entry point takes it.

    Attributes:
        config: the architecture, an [`M3GNetConfig`][jmattersim.M3GNetConfig].
        params: the Flax variables ``{"params": weights, "constants": basis
            buffers}``, float32 as stored.
        source: where the weights came from (checkpoint name, sha256, ...).
    """

    config: M3GNetConfig
    params: Any
    source: dict = dataclasses.field(default_factory=dict, compare=False)
    # cast copies by dtype; not an init field, so dataclasses.replace(model, params=...)
    # starts with an empty cache instead of the old parameters' casts
    _cast: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def astype(self, dtype) -> Model:
        """The same model with every array a JAX array of ``dtype``; cached, so
        repeated calls cost nothing.

        Args:
            dtype (numpy dtype): e.g. ``jnp.float32``, or ``jnp.float64`` (needs
                ``jax_enable_x64``).

        Returns:
            The cast [`Model`][jmattersim.Model].
        """
        return cached_cast(self, dtype)

    @property
    def num_parameters(self) -> int:
        """The number of weights (the basis constants not counted)."""
        return sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(self.params["params"]))


def cached_cast(holder: Any, dtype) -> Any:
    """``holder`` (a frozen dataclass with ``params`` and a ``_cast`` dict) with
    every array a JAX array of ``dtype``, cached by dtype unless traced."""
    key = np.dtype(dtype).name
    if key in holder._cast:
        return holder._cast[key]
    with jax.ensure_compile_time_eval():  # concrete arrays, even while jit traces
        cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), holder.params)
    out = dataclasses.replace(holder, params=cast)
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(cast)):
        holder._cast[key] = out  # traced parameters are never kept
    return out


def init_model(config: M3GNetConfig, seed: int = 0) -> Model:
    """A model with fresh random weights (for tests and demos: not physics).

    Args:
        config: the architecture.
        seed: the random seed of the initialisation.

    Returns:
        The [`Model`][jmattersim.Model].
    """
    return Model(config, init_params(config, jax.random.key(seed)), {"init_seed": seed})


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary directory beside ``out`` that becomes ``out`` only if
    the block succeeds; on any error or interrupt nothing is left behind."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it a directory's usual mode
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(model: Model, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes ``model`` to the directory ``out`` atomically.

    The directory holds an Orbax checkpoint (``params/``) and ``config.json``
    (upstream's ``model_args`` and the model's source); it is written beside
    ``out`` and renamed into place, so a failed write leaves nothing.

    Args:
        model: the [`Model`][jmattersim.Model].
        out: the directory to write.
        overwrite: replace an existing ``out``.

    Returns:
        ``out``, as a ``Path``.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    return write_directory(model, out, overwrite)


def write_directory(holder: Any, out: str | os.PathLike, overwrite: bool, **meta: Any) -> Path:
    """Writes the ``params`` of ``holder`` (a model or committee; an Orbax
    checkpoint, ``params/``) and ``config.json`` (the format, its config, its
    source and ``meta``) to the directory ``out``, atomically."""
    import orbax.checkpoint as ocp

    meta = {
        "format": FORMAT,
        "model_args": holder.config.to_dict(),
        "source": holder.source,
        **meta,
    }
    with atomic_directory(out, overwrite) as tmp:
        params = jax.tree_util.tree_map(np.asarray, holder.params)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            ckptr.wait_until_finished()
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return Path(out)


def read_model(path: str | os.PathLike) -> Model:
    """Reads a model directory written by :func:`save_model` (``jmattersim-convert``)."""
    path = Path(path).expanduser()
    meta, config = read_meta(path)
    if "committee" in meta:
        raise ValueError(
            f"{path} is a committee of {meta['committee']} members, not a single model: "
            "load it with jmattersim.train.load_committee (or pass it to MatterSimCalculator, "
            "evaluate or `jmattersim predict`, which accept committees)"
        )
    params = restore_params(path)
    check_params(params, config, str(path))
    return Model(config, params, meta.get("source", {}))


def read_meta(path: Path) -> tuple[dict, M3GNetConfig]:
    """The checked ``config.json`` of the model (or committee) directory ``path``
    and its config."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    meta_file = path / "config.json"
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a jmattersim model directory (no config.json); convert a MatterSim "
            "checkpoint with `jmattersim-convert SRC OUT` first"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_file} is corrupt (not JSON: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file} is not a jmattersim model config")
    if not isinstance(meta.get("model_args"), dict):
        raise ValueError(f"{meta_file} is corrupt: no 'model_args' mapping")
    try:
        config = M3GNetConfig.from_model_args(meta["model_args"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{meta_file} has invalid model_args: {e}") from e
    if not (path / "params").is_dir():
        raise ValueError(f"{path} is incomplete: no params/ checkpoint beside config.json")
    return meta, config


def restore_params(path: Path) -> Any:
    """The parameters in ``path/params`` as numpy arrays (not yet checked)."""
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(path.absolute() / "params")
    except Exception as e:  # Orbax/tensorstore raise many types for damaged files
        raise ValueError(
            f"cannot restore the parameters in {path / 'params'} (corrupt or "
            f"partial checkpoint): {type(e).__name__}: {e}"
        ) from e
    return jax.tree_util.tree_map(np.asarray, params)


@functools.lru_cache(maxsize=8)
def expected_shapes(config: M3GNetConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every variable ``config`` needs, by its path (traced once per config,
    and remembered for the next process)."""

    def traced() -> dict[str, tuple[int, ...]]:
        want = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
        flat = jax.tree_util.tree_flatten_with_path(want)[0]
        return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in flat}

    return programs.remembered("expected_shapes", {"config": config}, traced)


def check_params(params: Any, config: M3GNetConfig, where: str = "model") -> None:
    """Raises ValueError unless ``params`` has exactly the variables, shapes and
    finite values that ``config`` needs: a damaged model never gives a number."""
    flat_want = expected_shapes(config)
    try:
        flat_got = {
            jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
        }
    except Exception as e:  # pragma: no cover - exotic containers
        raise ValueError(f"{where}: parameters are not a tree of arrays ({e})") from e
    missing = sorted(set(flat_want) - set(flat_got))
    extra = sorted(set(flat_got) - set(flat_want))
    if missing or extra:
        raise ValueError(
            f"{where}: parameters do not match {config}: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    for key, shape in flat_want.items():
        value = flat_got[key]
        stored_as = value.size == int(np.prod(shape)) and key.startswith("['constants']")
        if value.shape != tuple(shape) and not stored_as:  # buffers: (1,) for a scalar
            raise ValueError(
                f"{where}: parameter {key} has shape {value.shape}, expected "
                f"{tuple(shape)} for {config}"
            )
        if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            raise ValueError(f"{where}: parameter {key} is not finite floating point")
