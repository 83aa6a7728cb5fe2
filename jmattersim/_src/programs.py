"""Traced programs kept on disk, so that a second process neither traces nor
compiles a program it ran before.

JAX's persistent compilation cache saves the compile, but a process still traces the
model and lowers it to StableHLO to compute the cache's key: about a second a
program on a CPU. :func:`compiled` stores the traced program instead
(``jax.export``, serialised StableHLO) and compiles it through the persistent cache:
a second process reads it back and lowers it in about a tenth of that, and its
compile is a cache hit.

A stored program is keyed by what decides it (a name for the function, its static
settings, the pytree, shapes and dtypes of its arguments) and by what could change
it unseen: the versions of jax, jaxlib and jmattersim, a digest of jmattersim's
source, the backend and devices, ``XLA_FLAGS`` and the jax settings that change a
program. Files live in ``<compile cache>/programs``, written atomically.
``JMATTERSIM_COMPILE_CACHE=off`` turns both off; a path moves both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import runtime

LOADED = "/jmattersim/programs/load_duration"
"""The ``jax.monitoring`` duration event of a program read from disk (not traced),
with the function's name as ``fun_name`` (the last dotted part of its name), as JAX
reports a trace."""

_SETTINGS = (  # jax settings that change a program without changing its arguments
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
)
_FORMAT = 1  # bump when what a stored file holds changes
_MAX_IN_MEMORY = 64


@dataclasses.dataclass(frozen=True)
class Program:
    """A compiled program of a pytree of arguments: call it as the function."""

    executable: jax.stages.Compiled  # of the flat leaves
    out_tree: Any

    def __call__(self, *args):
        return jax.tree_util.tree_unflatten(
            self.out_tree, self.executable(*jax.tree_util.tree_leaves(args))
        )

    def memory_analysis(self):
        """XLA's memory statistics of the executable."""
        return self.executable.memory_analysis()


_MEMORY: dict[Hashable, Program] = {}  # signature -> program, for this process


def compiled(
    name: str,
    fn: Callable,
    args: tuple,
    static: Mapping[str, Hashable] | None = None,
    donate_argnums: tuple[int, ...] = (),
) -> Program:
    """``fn`` compiled for ``args``: from this process's memory, from disk (no
    tracing), or traced, stored and compiled.

    Args:
        name: names ``fn`` for the key, e.g. ``"engine.predict_batch"``; two
            functions must never share a name.
        fn: ``fn(*args)``, a function of arrays (pytrees) to trace, its settings
            bound (a closure or ``functools.partial``).
        args: its arguments, pytrees of arrays, ``jax.ShapeDtypeStruct`` or Python
            scalars (their pytree, shapes and dtypes are the key; values unused).
        static: the settings bound into ``fn``; their ``repr`` is part of the key.
        donate_argnums: the arguments whose buffers the program may reuse (as
            ``jax.jit``'s).

    Returns:
        The :class:`Program`: call it with arguments of ``args``' pytree and shapes.
    """
    key = _signature(name, static or {}, args) + (donate_argnums,)
    program = _MEMORY.get(key)
    if program is None:
        program = _program(key, fn, args, donate_argnums)
        if len(_MEMORY) >= _MAX_IN_MEMORY:
            _MEMORY.pop(next(iter(_MEMORY)))
        _MEMORY[key] = program
    return program


def remembered(name: str, static: Mapping[str, Hashable], compute: Callable[[], Any]) -> Any:
    """``compute()`` (a picklable value that tracing gives, e.g. shapes), stored like a
    program and read back in the next process."""
    path = _path(_signature(name, static, ()))
    if path is not None and path.is_file():
        try:
            return pickle.loads(path.read_bytes())
        except Exception:  # noqa: BLE001 - an unreadable file is recomputed and replaced
            pass
    value = compute()
    if path is not None:
        _store(path, lambda: pickle.dumps(value))
    return value


def programs_dir() -> Path | None:
    """Where programs are stored: ``programs`` in the compile cache's directory, or
    None when the compile cache is off."""
    cache = runtime.configure().get("compile_cache")
    if cache is None:
        cache = jax.config.jax_compilation_cache_dir or None
    return Path(cache) / "programs" if cache else None


def clear_memory() -> None:
    """Forgets this process's programs (tests; stored files stay)."""
    _MEMORY.clear()


def _signature(name: str, static: Mapping[str, Hashable], args: tuple) -> tuple:
    leaves, tree = jax.tree_util.tree_flatten(args)
    shapes = tuple(map(_leaf_signature, leaves))
    return (name, tuple(sorted((k, repr(v)) for k, v in static.items())), tree, shapes, settings())


def _leaf_signature(leaf) -> tuple:
    """(shape, dtype, weakly typed) of an array, abstract array or Python scalar."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):  # the fast path: a few µs a call
        return (tuple(leaf.shape), np.dtype(leaf.dtype), bool(getattr(leaf, "weak_type", False)))
    return (np.shape(leaf), _dtype(leaf), _weak(leaf))


def _dtype(leaf) -> np.dtype:
    return leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)


def _weak(leaf) -> bool:
    """Python scalars trace as weakly typed arrays, as do some jax arrays."""
    return bool(getattr(leaf, "weak_type", not hasattr(leaf, "dtype")))


def _program(key: tuple, fn: Callable, args: tuple, donate_argnums: tuple[int, ...]) -> Program:
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    sizes = np.cumsum([0] + [len(jax.tree_util.tree_leaves(a)) for a in args])
    donated = tuple(i for a in donate_argnums for i in range(sizes[a], sizes[a + 1]))
    path = _path(key[:5])  # donation changes the compile, not the traced program
    stored = _load(path, key[0]) if path is not None else None
    if stored is None:
        try:
            exported, out_tree = _export(key[0], fn, in_tree, leaves)
        except _NOT_EXPORTABLE:  # e.g. a host callback: compiled, not stored
            return _unstored(key[0], fn, in_tree, leaves, donated)
        if path is not None:
            _store(path, lambda: pickle.dumps((exported.serialize(), out_tree)))
    else:
        exported, out_tree = stored
    executable = jax.jit(exported.call, donate_argnums=donated).lower(*leaves).compile()
    return Program(executable, out_tree)


_NOT_EXPORTABLE = (ValueError, NotImplementedError)


def _unstored(name: str, fn: Callable, in_tree, leaves: list, donated: tuple) -> Program:
    out_trees: list = []
    flat = _flat(name, fn, in_tree, out_trees)
    executable = jax.jit(flat, donate_argnums=donated).lower(*leaves).compile()
    return Program(executable, out_trees[-1])


def _flat(name: str, fn: Callable, in_tree, out_trees: list) -> Callable:
    """``fn`` as a function of the flat leaves returning flat leaves, named after the
    last dotted part of ``name`` (JAX reports its traces under it); each trace
    appends its output's pytree to ``out_trees``."""

    def flat(*xs):
        out_leaves, out_tree = jax.tree_util.tree_flatten(
            fn(*jax.tree_util.tree_unflatten(in_tree, xs))
        )
        out_trees.append(out_tree)
        return out_leaves

    flat.__name__ = flat.__qualname__ = name.rsplit(".", 1)[-1]
    return flat


def _export(name: str, fn: Callable, in_tree, leaves: list) -> tuple[jax.export.Exported, Any]:
    """``fn`` traced and exported as a function of the flat leaves, and its output's
    pytree."""
    out_trees: list = []
    abstract = [jax.ShapeDtypeStruct(np.shape(x), _dtype(x), weak_type=_weak(x)) for x in leaves]
    exported = jax.export.export(jax.jit(_flat(name, fn, in_tree, out_trees)))(*abstract)
    return exported, out_trees[-1]


def _load(path: Path, name: str) -> tuple[jax.export.Exported, Any] | None:
    """The stored program at ``path``, or None (missing or unreadable: it is then
    traced again and replaced). Reported to ``jax.monitoring`` as ``LOADED``."""
    if not path.is_file():
        return None
    start = time.perf_counter()
    try:
        blob, out_tree = pickle.loads(path.read_bytes())
        exported = jax.export.deserialize(bytearray(blob))
    except Exception:  # noqa: BLE001
        return None
    jax.monitoring.record_event_duration_secs(
        LOADED, time.perf_counter() - start, fun_name=name.rsplit(".", 1)[-1]
    )
    return exported, out_tree


def _path(key: tuple) -> Path | None:
    folder = programs_dir()
    if folder is None:
        return None
    name, static, tree, shapes, _ = key
    text = repr((_FORMAT, name, static, str(tree), shapes, environment()))
    return folder / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:40]}.program"


def _store(path: Path, data: Callable[[], bytes]) -> None:
    """Writes ``data()`` to ``path`` atomically; what cannot be stored (a read-only
    cache) is only not kept."""
    try:
        _write_atomically(path, data())
    except Exception:  # noqa: BLE001
        pass


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_ENVIRONMENT: list[tuple] = []


def environment() -> tuple:
    """What could change a program without changing its key's other parts: versions,
    jmattersim's source digest, backend, devices, XLA flags and jax settings."""
    if not _ENVIRONMENT:
        from importlib.metadata import version

        import jaxlib

        devices = jax.devices()
        _ENVIRONMENT.append(
            (
                jax.__version__,
                jaxlib.__version__,
                _package_version(version),
                source_digest(),
                jax.default_backend(),
                tuple(d.device_kind for d in devices),
                os.environ.get("XLA_FLAGS", ""),
            )
        )
    return _ENVIRONMENT[0] + settings()


def settings() -> tuple[str, ...]:
    """The jax settings that change a program without changing its arguments."""
    return tuple(str(getattr(jax.config, s, None)) for s in _SETTINGS)


def _package_version(version) -> str:
    try:
        return version("jmattersim")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "unknown"


def source_digest() -> str:
    """sha256 of jmattersim's Python source: any edit (a development checkout)
    makes every stored program stale."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
