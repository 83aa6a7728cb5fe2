"""The evaluation engine: the one path from concrete structures to energies,
forces and stresses.

Structures become host graphs (:mod:`jmattersim._src.graph`, exact, as upstream builds
them), are packed into a few fixed budgets (:class:`~jmattersim.Capacity`,
first-fit decreasing, in the spirit of ``jraph.dynamically_batch``), padded, and
run through one compiled function per budget and dtype (:func:`predict_batch`).
The ASE calculator, :func:`jmattersim.evaluate`, ``jmattersim predict`` and
``forward_batch`` on concrete inputs all call :func:`run`, so they share their
compiled functions: a process compiles at most one function per rung of
:data:`LADDER` (and one per structure larger than its top rung).

- A stream packs into the top rung, its last group included (a compile costs
  more than that group's padding).
- One structure alone (the calculator), or a short run, runs in the smallest
  rung that holds it.
- A structure larger than a rung runs in the next; beyond the top rung it gets
  its own budget, each count rounded up to :func:`~jmattersim._src.padding.bucket`.

A :class:`~jmattersim.train.Committee` of K models runs the same plan through
:func:`predict_batch` with ``committee``: the model vmapped over the members'
stacked variables, one compiled function per budget whatever K is (its working memory K times a
model's), returning the member mean and population standard deviation in one
:class:`~jmattersim.Predictions` (its ``_std`` fields).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from . import programs, sharding
from .arrays import default_float
from .capacity import Capacity, Counts
from .checkpoint import Model
from .committee import Committee
from .config import M3GNetConfig
from .energy import predict
from .graph import StructureGraph
from .padding import counts_of, pad
from .predictions import Predictions

# Budgets, smallest first: each rung four times the one below, the top rung
# holding the largest structure of the shared data sets (9,872 edges, 161,528
# triplets). Edges dominate the cost; triplets (8 to 12 per edge on average in
# MPtrj, Alexandria and MPF, up to 40) are budgeted at 16 per edge, atoms at one per
# 8 edges (MPtrj averages 33 edges per atom).
LADDER: tuple[Capacity, ...] = (
    Capacity(nodes=64, edges=768, triplets=12288, graphs=32),
    Capacity(nodes=384, edges=3072, triplets=49152, graphs=128),
    Capacity(nodes=1536, edges=12288, triplets=196608, graphs=512),
)
"""The engine's budgets, smallest first: 768, 3072 and 12288 edges (16 triplets per
edge, one atom per 8 edges). The calculator, ``evaluate``, ``jmattersim predict``,
``forward_batch`` on concrete inputs and ``relax`` pack structures into them, so a
process compiles at most one function per budget (and one per structure beyond the
largest)."""
SHORT_RUN = 4  # groups: up to this many run in the smallest rungs that hold them


# ------------------------------------------------------------------------------ budgets


def smallest_rung(counts: Counts, ladder: Sequence[Capacity] = LADDER) -> Capacity:
    """The smallest rung of ``ladder`` that holds ``counts``, else an own budget."""
    for rung in ladder:
        if rung.holds(counts):
            return rung
    return Capacity.above(counts)


def first_fit_decreasing(
    items: Sequence[int], counts: Sequence[Counts], budget: Capacity
) -> list[list[int]]:
    """Packs ``items`` (indices into ``counts``) into as few groups as fit ``budget``:
    largest first (by the budget share of their largest count), each into the
    first group it fits. Groups list their items in increasing order."""
    limit = np.asarray(budget.slots) - 1  # strictly below: one padding graph, node, edge
    sizes = np.asarray([counts[k] for k in items], dtype=np.int64).reshape(-1, 4)
    order = np.argsort(-(sizes / np.asarray(budget.slots)).max(axis=1), kind="stable")
    loads = np.zeros((0, 4), np.int64)
    groups: list[list[int]] = []
    for row in order:
        fits = np.flatnonzero(np.all(loads + sizes[row] <= limit, axis=1))
        if fits.size:
            loads[fits[0]] += sizes[row]
            groups[fits[0]].append(items[row])
        else:
            loads = np.vstack([loads, sizes[row]])
            groups.append([items[row]])
    return [sorted(g) for g in groups]


def plan(
    counts: Sequence[Counts], ladder: Sequence[Capacity] = LADDER
) -> list[tuple[list[int], Capacity]]:
    """Groups of structure indices and the budget each runs in (see the module
    notes). Every structure is in exactly one group.

    Structures that the top rung holds are packed into it (first-fit
    decreasing). A short run (at most :data:`SHORT_RUN` groups: the calculator, a
    small ``forward_batch``) runs each group in the smallest rung that holds it,
    its sparse groups packed again into the rung below where that costs less. A
    longer run (a stream) keeps every group in the top rung: its last group's
    padding costs less than compiling another shape. Larger structures run one
    by one, each in its own budget."""
    main = ladder[-1]
    fits = [k for k in range(len(counts)) if main.holds(counts[k])]
    groups = first_fit_decreasing(fits, counts, main)
    if len(groups) > SHORT_RUN:
        out = [(g, main) for g in groups]
    else:
        if len(ladder) > 1 and groups:
            sparse = [g for g in groups if _fill(g, counts, main) < 0.5]
            items = sorted(k for g in sparse for k in g)
            lower = ladder[-2]
            if items and all(lower.holds(counts[k]) for k in items):
                again = first_fit_decreasing(items, counts, lower)
                if _cost(again, counts, ladder) < _cost(sparse, counts, ladder):
                    groups = [g for g in groups if _fill(g, counts, main) >= 0.5] + again
        out = [(g, smallest_rung(_total(g, counts), ladder)) for g in groups]
    out += [
        ([k], smallest_rung(counts[k], ladder))
        for k in range(len(counts))
        if not main.holds(counts[k])
    ]
    return sorted(out, key=lambda item: item[0])


def _total(group: Sequence[int], counts: Sequence[Counts]) -> Counts:
    return sum((counts[k] for k in group), Counts(0, 0, 0, 0))


def _fill(group: Sequence[int], counts: Sequence[Counts], budget: Capacity) -> float:
    return _total(group, counts).edges / budget.edges


def _cost(
    groups: Sequence[Sequence[int]], counts: Sequence[Counts], ladder: Sequence[Capacity]
) -> float:
    return sum(smallest_rung(_total(g, counts), ladder).cost() for g in groups)


# --------------------------------------------------------------------------- compiled


_RECORDERS: list[set] = []
_STATIC = ("config", "derivatives", "within_cutoffs", "soft_normalize", "committee")


@functools.partial(jax.jit, static_argnames=_STATIC)
def predict_batch(
    config: M3GNetConfig,
    params,
    batch,
    derivatives: bool = True,
    within_cutoffs: bool = False,
    soft_normalize: bool = True,
    committee: bool = False,
) -> Predictions:
    """:func:`jmattersim._src.energy.predict` (or energies only, without ``derivatives``),
    compiled once per config, budget, dtype and committee size. With ``committee``,
    ``params`` are stacked along a leading member axis and the model is vmapped
    over them: the member means, with the population standard deviations (ddof=0)
    in the ``_std`` fields."""
    args = (derivatives, within_cutoffs, soft_normalize, committee)
    return _predict_any(config, params, batch, *args)


def _predict_program(config, params, batch, *flags):
    """:func:`predict_batch` compiled for these arguments, once per process and
    stored for the next (:mod:`jmattersim._src.programs`)."""
    return programs.compiled(
        "engine.predict_batch",
        lambda p, b: predict_batch(config, p, b, *flags),
        (params, batch),
        dict(zip(_STATIC, (config, *flags), strict=True)),
    )


def _predict_any(config, params, batch, derivatives, within_cutoffs, soft_normalize, committee):
    if not committee:
        return _predict(config, params, batch, derivatives, within_cutoffs, soft_normalize)

    def one(member_params):
        return _predict(config, member_params, batch, derivatives, within_cutoffs, soft_normalize)

    members = jax.vmap(one)(params)
    mean = jax.tree_util.tree_map(lambda x: x.mean(axis=0), members)
    std = jax.tree_util.tree_map(lambda x: x.std(axis=0), members)  # ddof=0
    return mean._replace(energy_std=std.energy, forces_std=std.forces, stress_std=std.stress)


def _predict(config, params, batch, derivatives, within_cutoffs, soft_normalize) -> Predictions:
    return predict(config, params, batch, soft_normalize, within_cutoffs, derivatives=derivatives)


def _device_steps(groups, devices: int) -> list[tuple[list[list[int]], Capacity]]:
    """Groups of one budget, ``devices`` at a time (one per device)."""
    by_budget: dict[Capacity, list[list[int]]] = {}
    for group, budget in groups:
        by_budget.setdefault(budget, []).append(group)
    return [
        (members[i : i + devices], budget)
        for budget, members in by_budget.items()
        for i in range(0, len(members), devices)
    ]


def _collect(step, result, graphs, out, stacked: bool) -> None:
    """Copies one call's per-structure predictions into ``out``."""
    parts = sharding.unstack(result, len(step)) if stacked else [jax.device_get(result)]
    for group, part in zip(step, parts, strict=True):
        start = 0
        for i, k in enumerate(group):
            out[k] = _structure(part, i, start, graphs[k].n_node)
            start += graphs[k].n_node


def _structure(part: Predictions, i: int, start: int, n: int) -> Predictions:
    """Graph ``i`` (nodes ``start:start + n``) of ``part``: energies as floats,
    the other fields as numpy arrays (None stays None)."""

    def graph(x, kind=np.asarray):
        return None if x is None else kind(x[i])

    def nodes(x):
        return None if x is None else np.asarray(x[start : start + n])

    return Predictions(
        graph(part.energy, float),
        nodes(part.forces),
        graph(part.stress),
        graph(part.energy_std, float),
        nodes(part.forces_std),
        graph(part.stress_std),
    )


@contextlib.contextmanager
def recording() -> Iterator[set]:
    """Collects the (config, budget, dtype, derivatives, soft_normalize) keys that
    :func:`run` uses inside the block (a committee's with its size K appended):
    the distinct shapes a workload needs compiled."""
    used: set = set()
    _RECORDERS.append(used)
    try:
        yield used
    finally:
        _RECORDERS.remove(used)


@functools.lru_cache(maxsize=8)
def _sharded_predict(
    config: M3GNetConfig,
    derivatives: bool,
    within_cutoffs: bool,
    soft_normalize: bool,
    mesh: jax.sharding.Mesh,
    committee: bool = False,
):
    def fn(params, batch):
        args = (derivatives, within_cutoffs, soft_normalize, committee)
        return _predict_any(config, params, batch, *args)

    return sharding.over_devices(fn, mesh)


# ------------------------------------------------------------------------------ run


def run(
    model: Model | Committee,
    graphs: Sequence[StructureGraph],
    *,
    derivatives: bool = True,
    dtype=None,
    ladder: Sequence[Capacity] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    soft_normalize: bool = True,
) -> list[Predictions]:
    """One [`Predictions`][jmattersim.Predictions] per graph, in their order (energy
    float eV, forces (N, 3) eV/Å, stress (3, 3) eV/Å³, numpy; forces and stress
    None without ``derivatives``); of a committee, the member means with their
    standard deviations.

    Calls run one at a time (on a CPU, overlapping calls slow each other down and
    each holds its own working memory). With ``mesh`` (several devices), groups of
    one budget run ``mesh.size`` at a time, one per device."""
    dtype = np.dtype(dtype or default_float())
    ladder = LADDER if ladder is None else tuple(ladder)
    config = model.config
    params = model.astype(dtype).params
    committee = isinstance(model, Committee)
    within = any(g.skin > 0 for g in graphs)
    groups = plan([counts_of(g) for g in graphs], ladder)
    for _, budget in groups:
        for used in _RECORDERS:
            key = (config, budget, dtype.name, derivatives, soft_normalize)
            used.add(key + (model.size,) if committee else key)
    stacked_runs = mesh is not None and mesh.size > 1
    if stacked_runs:
        steps = _device_steps(groups, mesh.size)
        run_step = _sharded_predict(config, derivatives, within, soft_normalize, mesh, committee)
    else:
        steps = [([group], budget) for group, budget in groups]
    out: list[Predictions | None] = [None] * len(graphs)
    for step, budget in steps:  # one call at a time: concurrent calls slow each other down
        batches = [pad([graphs[k] for k in g], budget, config, dtype) for g in step]
        if stacked_runs:
            batches += [pad([], budget, config, dtype)] * (mesh.size - len(step))
            result = run_step(params, sharding.place(sharding.stack(batches), mesh))
        else:
            flags = (derivatives, within, soft_normalize, committee)
            result = _predict_program(config, params, batches[0], *flags)(params, batches[0])
        _collect(step, result, graphs, out, stacked_runs)
    return out  # type: ignore[return-value]
