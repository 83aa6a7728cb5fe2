"""Saving and loading converted models: an Orbax checkpoint plus ``config.json``.

Layout of a model directory::

    config.json   {"format": "jmattersim", "model_args": {...}, "source": {...}}
    params/       Orbax checkpoint of the Flax variables {"params", "constants"}
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from .config import M3GNetConfig

FORMAT = "jmattersim"
PRETRAINED = ("mattersim-v1.0.0-1M", "mattersim-v1.0.0-5M")
# Where upstream MatterSim downloads its checkpoints from, and where it keeps them.
UPSTREAM_URL = "https://raw.githubusercontent.com/microsoft/mattersim/main/pretrained_models/"
UPSTREAM_CACHE = Path("~/.local/mattersim/pretrained_models").expanduser()


def cache_dir() -> Path:
    """Converted models live here: ``$JMATTERSIM_CACHE`` or ~/.cache/jmattersim."""
    root = os.environ.get("JMATTERSIM_CACHE") or Path("~/.cache/jmattersim").expanduser()
    return Path(root)


@dataclasses.dataclass(frozen=True)
class Model:
    """A converted MatterSim model: its config and its Flax variables.

    params: {"params": weights, "constants": basis buffers}, float32 as stored.
    """

    config: M3GNetConfig
    params: Any
    source: dict = dataclasses.field(default_factory=dict, compare=False)

    def astype(self, dtype) -> Model:
        """The same model with every array cast to ``dtype`` (float64 needs x64)."""
        cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), self.params)
        return dataclasses.replace(self, params=cast)

    @property
    def num_parameters(self) -> int:
        return sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(self.params["params"]))


def init_model(config: M3GNetConfig, seed: int = 0) -> Model:
    """A model with fresh random weights (for tests and demos: not physics)."""
    from .energy import init_params

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
    """Writes ``model`` to the directory ``out`` atomically."""
    import orbax.checkpoint as ocp

    with atomic_directory(out, overwrite) as tmp:
        params = jax.tree_util.tree_map(np.asarray, model.params)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            ckptr.wait_until_finished()
        meta = {"format": FORMAT, "model_args": model.config.to_dict(), "source": model.source}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return Path(out)


def load_model(path: str | os.PathLike) -> Model:
    """Loads a model: a directory written by ``jmattersim-convert``, a MatterSim
    ``.pth`` checkpoint (converted in memory; needs torch), or a published name
    (``mattersim-v1.0.0-1M``/``-5M``: converted once into :func:`cache_dir`)."""
    import orbax.checkpoint as ocp

    name = str(path)
    if name.removesuffix(".pth").lower() in {p.lower() for p in PRETRAINED}:
        path = pretrained(name)
    path = Path(path).expanduser()
    if path.is_file():
        from convert_weights.convert import convert_checkpoint

        return convert_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: expected a jmattersim model directory, a MatterSim .pth "
            f"checkpoint or one of {', '.join(PRETRAINED)}; convert a MatterSim checkpoint "
            "with `jmattersim-convert SRC OUT` first"
        )
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
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(path.absolute() / "params")
    except Exception as e:  # Orbax/tensorstore raise many types for damaged files
        raise ValueError(f"cannot restore the parameters in {path / 'params'} (corrupt or "
                         f"partial checkpoint): {type(e).__name__}: {e}") from e
    params = jax.tree_util.tree_map(np.asarray, params)
    check_params(params, config, str(path))
    return Model(config, params, meta.get("source", {}))


def check_params(params: Any, config: M3GNetConfig, where: str = "model") -> None:
    """Raises ValueError unless ``params`` has exactly the variables, shapes and
    finite values that ``config`` needs: a damaged model never gives a number."""
    from .energy import init_params

    want = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    flat_want = {jax.tree_util.keystr(k): v.shape
                 for k, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    try:
        flat_got = {jax.tree_util.keystr(k): np.asarray(v)
                    for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    except Exception as e:  # pragma: no cover - exotic containers
        raise ValueError(f"{where}: parameters are not a tree of arrays ({e})") from e
    missing = sorted(set(flat_want) - set(flat_got))
    extra = sorted(set(flat_got) - set(flat_want))
    if missing or extra:
        raise ValueError(f"{where}: parameters do not match {config}: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for key, shape in flat_want.items():
        value = flat_got[key]
        stored_as = value.size == int(np.prod(shape)) and key.startswith("['constants']")
        if value.shape != tuple(shape) and not stored_as:  # buffers: (1,) for a scalar
            raise ValueError(f"{where}: parameter {key} has shape {value.shape}, expected "
                             f"{tuple(shape)} for {config}")
        if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            raise ValueError(f"{where}: parameter {key} is not finite floating point")


def pretrained(name: str) -> Path:
    """Directory of the converted published checkpoint ``name``, converting it
    (and downloading the .pth where a network is) on first use."""
    canonical = {p.lower(): p for p in PRETRAINED}[name.removesuffix(".pth").lower()]
    target = cache_dir() / canonical
    if (target / "config.json").is_file():
        return target
    from convert_weights.convert import convert_file, fetch_pretrained

    convert_file(fetch_pretrained(canonical), target, overwrite=True)
    return target
