"""``jmattersim predict`` over a whole data set: streamed in chunks, killed
midway, resumed, and the result byte for byte that of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import pytest
from small_reference import MODEL

from conftest import MPTRJ

EXE = Path(sys.executable).with_name("jmattersim")


FRAMES = 400  # the file's first 400 frames: four chunks of 100


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "frames.extxyz"
    ase.io.write(path, ase.io.read(MPTRJ, index=f":{FRAMES}"), format="extxyz")
    return path


@pytest.fixture(scope="module")
def small_model():
    """The stored small model's directory: resuming is about bookkeeping, not physics."""
    return MODEL


def predict(model, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(EXE),
        "predict",
        str(data),
        "--model",
        str(model),
        "--out",
        str(out),
        "--chunk",
        "100",
        *extra,
    ]


def test_interrupted_predict_resumes_to_the_uninterrupted_output(small_model, data, tmp_path):
    whole = tmp_path / "whole.extxyz"
    run = subprocess.run(
        predict(small_model, data, whole), capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert not whole.with_name(whole.name + ".progress.json").exists()

    out = tmp_path / "resumed.extxyz"
    state = out.with_name(out.name + ".progress.json")
    proc = subprocess.Popen(
        predict(small_model, data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["frames"] >= 200:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    frames_then = json.loads(state.read_text())["frames"]
    assert 200 <= frames_then < FRAMES, frames_then
    with open(out, "ab") as f:  # the kill may land mid-write: leave a torn tail
        f.write(b'42\nLattice="1 0 0')

    run = subprocess.run(
        predict(small_model, data, out), capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"resuming after {frames_then} frames" in run.stdout + run.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert not state.exists()
    assert len(ase.io.read(out, index=":")) == FRAMES
