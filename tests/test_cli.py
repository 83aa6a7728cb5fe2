"""``jmattersim predict``: every frame's energy, forces and stress, as the calculator gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

import jmattersim

from conftest import MPTRJ


def test_predict_writes_every_frame(converted, tmp_path):
    frames = ase.io.read(MPTRJ, index=":6")
    src = tmp_path / "in.extxyz"
    ase.io.write(src, frames)
    out = tmp_path / "out.extxyz"
    exe = Path(sys.executable).with_name("jmattersim")
    proc = subprocess.run(
        [str(exe), "predict", str(src), "--model", str(converted["1M"]), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    written = ase.io.read(out, index=":")
    assert len(written) == len(frames)
    calc = jmattersim.MatterSimCalculator(converted["1M"])
    for a, w in zip(frames, written, strict=True):
        a.calc = calc
        assert abs(w.get_potential_energy() - a.get_potential_energy()) / len(a) < 1e-5
        np.testing.assert_allclose(w.get_forces(), a.get_forces(), atol=1e-4)
        np.testing.assert_allclose(w.get_stress(), a.get_stress(), atol=1e-6)
        # exact: atomic numbers are integers, written and read back
        np.testing.assert_array_equal(w.numbers, a.numbers)


@pytest.mark.fast
def test_predict_without_model_says_how(tmp_path):
    exe = Path(sys.executable).with_name("jmattersim")
    src = tmp_path / "in.extxyz"
    ase.io.write(src, ase.io.read(MPTRJ, index="0"))
    proc = subprocess.run(
        [str(exe), "predict", str(src), "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "cannot load model" in proc.stderr and "jmattersim-convert" in proc.stderr


@pytest.mark.fast
def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    out = subprocess.run(
        [sys.executable, "-m", "jmattersim", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"jmattersim {version('jmattersim')}"
