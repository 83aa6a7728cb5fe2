"""The workloads of ``run.py``, one module each, and their registry: ``WORKLOADS``
maps each name that ``--only`` takes to its ``Workload``, in the order they run.

A workload module holds its measuring code and a ``measure(bench, config)`` entry
with its default sizes; whole-process workloads run a script of ``benchmarks/``
(``calculator_pass.py``, ``relax_batch.py``, ...) through ``harness.measured``.
A new workload is one module and one line here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import (
    first_pass,
    inverse_design,
    lammps,
    md,
    md_many,
    phonons,
    predict,
    programs,
    relax,
    relaxed_gradients,
    steady,
    train,
)
from report import Bench


@dataclass(frozen=True)
class Workload:
    """``measure(bench, config)`` records the workload's rows through ``bench.add``;
    ``every_config``: it runs once per architecture of ``--configs`` (all of these
    first), else once, on 1M."""

    measure: Callable[[Bench, str], None]
    every_config: bool = False


WORKLOADS: dict[str, Workload] = {
    "predict": Workload(predict.measure, every_config=True),
    "steady": Workload(steady.measure, every_config=True),
    "inverse_design": Workload(inverse_design.measure, every_config=True),
    "first_pass": Workload(first_pass.measure),
    "relax": Workload(relax.measure),
    "md": Workload(md.measure),
    "md_many": Workload(md_many.measure),
    "phonons": Workload(phonons.measure),
    "train": Workload(train.measure),
    "programs": Workload(programs.measure, every_config=True),
    "relaxed_gradients": Workload(relaxed_gradients.measure),
    "lammps": Workload(lammps.measure),
}
