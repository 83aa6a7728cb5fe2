"""The public API's shape: names, modules, units, wording (fast tier)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import jmattersim

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = {"batch", "checks", "derivatives", "jax_md", "lammps", "testing", "train"}


def test_no_public_function_shares_its_name_with_a_submodule():
    for name in jmattersim.__all__:
        value = getattr(jmattersim, name)
        is_module = inspect.ismodule(value)
        spec = importlib.util.find_spec(f"jmattersim.{name}")
        assert is_module == (spec is not None), f"jmattersim.{name}"
    modules = {p.stem for p in (REPO / "jmattersim").glob("*.py")} - {"__init__", "__main__"}
    assert modules == PUBLIC_MODULES == set(jmattersim.SUBMODULES)
    assert not any(inspect.ismodule(getattr(jmattersim, n)) for n in jmattersim.__all__)


def public_modules() -> list:
    return [jmattersim, *(getattr(jmattersim, m) for m in sorted(PUBLIC_MODULES))]


def test_a_small_top_level_and_every_name_under_one_public_path():
    """At most 20 names at the top level; no object under two public names."""
    assert len(jmattersim.__all__) <= 20
    paths: dict[int, list[str]] = {}
    for module in public_modules():
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) or inspect.ismodule(value):
                paths.setdefault(id(value), []).append(f"{module.__name__}.{name}")
    twice = [p for p in paths.values() if len(p) > 1]
    assert not twice, f"names reachable under two public paths: {twice}"


def test_every_public_name_resolves_and_is_documented():
    for module in public_modules():
        assert module.__doc__
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) or inspect.ismodule(value):
                assert inspect.getdoc(value), f"{module.__name__}.{name} has no docstring"


def stress_fields(cls) -> list[str]:
    names = cls._fields if hasattr(cls, "_fields") else [f.name for f in dataclasses.fields(cls)]
    return [n for n in names if "stress" in n]


def test_stress_units_are_unambiguous():
    """A field called ``stress`` is eV/Å³ (ASE's unit); GPa is always in the name,
    except forward_batch's ``stresses`` key (upstream's), documented as GPa."""
    assert stress_fields(jmattersim.Predictions) == ["stress", "stress_std"]
    assert re.search(r"stress.*eV/Å\^?3|stress.*eV/Å³", inspect.getdoc(jmattersim.Predictions))
    assert "GPa" in inspect.getdoc(jmattersim.Predictions)
    assert "GPa" in inspect.getdoc(jmattersim.Predictions.stress_gpa)
    assert re.search(r"stresses.*GPa", inspect.getdoc(jmattersim.forward_batch), re.S)
    assert "eV/Å" in inspect.getdoc(jmattersim.MatterSimCalculator)


# "seed" only as a random seed: every line that says it also says one of these
RANDOM_SEED = re.compile(
    r"random|seed[=:,)\]}]|--seed|seeded|seeds|SEEDS|rng|manual_seed|seed [+*]|\(seed|"
    r"seed (of|for) the (frame|random)|seed \d|with seed|key\(seed|seed\b.*\bdraw",
    re.IGNORECASE,
)


def test_seed_means_only_a_random_seed():
    roots = [
        REPO / "jmattersim",
        REPO / "convert_weights",
        REPO / "notebooks",
        REPO / "docs",
        REPO / "benchmarks",
        REPO / "tests",
    ]
    files = [REPO / "README.md", REPO / "CHANGELOG.md"]
    for root in roots:
        files += [p for p in root.rglob("*") if p.suffix in {".py", ".md", ".ipynb"}]
    bad = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"seed", line, re.IGNORECASE) and not RANDOM_SEED.search(line):
                bad.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not bad, "\n".join(bad)


def test_a_deprecation_raised_from_our_code_fails_the_suite():
    """pyproject's filterwarnings turns a DeprecationWarning or FutureWarning
    attributed to jmattersim (a library warning about how we call it) into an error."""
    import warnings

    for category in (DeprecationWarning, FutureWarning):
        with pytest.raises(category):
            warnings.warn_explicit("old API", category, "phonons.py", 1, "jmattersim._src.phonons")
