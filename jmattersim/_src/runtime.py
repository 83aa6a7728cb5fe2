"""Process settings that make jmattersim fast on CPU and compile each shape once.

Applied once, at ``import jmattersim`` (before JAX starts its threads):

- **A caching allocator.** XLA's CPU runtime allocates one temporary buffer per
  call, hundreds of MB for a batch, and glibc hands buffers above its mmap
  threshold straight to the kernel and back. Every call then page-faults its whole
  working set in again: about half of a forces-and-stress call on a 2-core machine.
  ``mallopt`` (glibc only) keeps freed memory in the process instead: one arena,
  no mmap for large blocks, no trimming. Memory is then reused from call to call
  (the resident size stays at its high-water mark, as with PyTorch's caching
  allocator). ``JMATTERSIM_ALLOCATOR=system`` leaves glibc's defaults.
- **JAX's persistent compilation cache**, in ``$JMATTERSIM_CACHE/xla`` (default
  ``~/.cache/jmattersim/xla``), so that a second process compiles nothing it has
  compiled before. ``JMATTERSIM_COMPILE_CACHE=off`` disables it, a path moves it;
  a cache directory already set in ``jax.config`` is left as it is. The traced
  programs :mod:`jmattersim._src.programs` stores live in its ``programs/``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

_OFF = {"0", "off", "false", "no", "none", "system"}
_STATE: dict[str, object] = {}

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def cache_dir() -> Path:
    """jmattersim's cache: ``$JMATTERSIM_CACHE`` or ``~/.cache/jmattersim``."""
    root = os.environ.get("JMATTERSIM_CACHE") or Path("~/.cache/jmattersim").expanduser()
    return Path(root)


def tune_allocator() -> bool:
    """Keeps freed memory for reuse (glibc ``mallopt``); True if applied."""
    if os.environ.get("JMATTERSIM_ALLOCATOR", "").lower() in _OFF:
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt semantics)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_ARENA_MAX, 1)
        and mallopt(_M_MMAP_MAX, 0)
        and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )


def release_memory() -> None:
    """Returns the heap's free memory to the system (glibc ``malloc_trim``): for long
    loops of large calls, whose freed buffers the tuned allocator would otherwise keep
    and fragment. Does nothing elsewhere."""
    if not _STATE.get("allocator_tuned"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def enable_compile_cache() -> Path | None:
    """Turns on JAX's persistent compilation cache; returns its directory."""
    setting = os.environ.get("JMATTERSIM_COMPILE_CACHE", "")
    if setting.lower() in _OFF:
        return None
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path = Path(setting).expanduser() if setting else cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def configure() -> dict[str, object]:
    """Applies both settings once per process; returns what was applied."""
    if not _STATE:
        _STATE["allocator_tuned"] = tune_allocator()
        _STATE["compile_cache"] = enable_compile_cache()
    return dict(_STATE)
