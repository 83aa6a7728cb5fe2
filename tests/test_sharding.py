"""The graph axis split across devices: 4 host CPU devices in a subprocess
(XLA fixes the device count at start-up), results against one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from small_reference import MODEL

from conftest import MPTRJ

SCRIPT = Path(__file__).parent / "scripts" / "sharded_forward.py"


def test_forward_batch_sharded_over_4_devices_equals_one_device():
    """The stored small model (placement and equality are machinery, not model
    numbers; the 1M model's batched numbers are checked against upstream elsewhere)."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(MODEL), str(MPTRJ)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    assert report["devices"] == 4 and report["mesh"] == 4
    for where in ("inputs", "outputs"):
        assert report[where], where
        for leaf in report[where]:  # every array split 4 ways, one slice per device
            assert leaf["spec"] == ["graphs"], leaf
            assert len(set(leaf["devices"])) == 4 and leaf["rows"] == 4, leaf
            assert leaf["shard_rows"] == [1], leaf
    tol = {"total_energy": 1e-4, "forces": 1e-4, "stresses": 1e-3}  # eV, eV/A, GPa
    for key, err in report["max_abs"].items():
        assert report["scale"][key] > 1e-3, key  # the comparison is not of zeros
        assert err <= tol[key], (key, err)


def test_committee_sharded_over_2_devices_equals_one_device():
    """A committee's mean and spread split across 2 host devices (no torch needed)."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    script = Path(__file__).parent / "scripts" / "sharded_committee.py"
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK"), proc.stdout[-1000:]
