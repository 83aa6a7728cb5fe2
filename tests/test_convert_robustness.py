"""The converter refuses what is not a MatterSim m3gnet checkpoint, clearly, leaving
nothing behind, and never runs code hidden in a pickle.

(Missing key, wrong shape, extra key and atomic output are in test_convert.py.)
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import jmattersim  # noqa: E402
from convert_weights.cli import main  # noqa: E402
from jmattersim._src.conversion import ConversionError, convert_checkpoint  # noqa: E402


def refused(src: Path, tmp_path: Path, capsys, match: str) -> str:
    """The error from the API, the CLI and load_model; no output directory left."""
    with pytest.raises(ConversionError, match=match):
        convert_checkpoint(src)
    with pytest.raises(ConversionError, match=match):
        jmattersim.load_model(src)
    out = tmp_path / "out"
    assert main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jmattersim-convert: error: ") and str(src) in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    return err


def test_truncated_checkpoint(checkpoints, tmp_path, capsys):
    data = checkpoints["1M"].read_bytes()
    for fraction in (0.5, 0.99):
        src = tmp_path / f"truncated-{fraction}.pth"
        src.write_bytes(data[: int(len(data) * fraction)])
        refused(
            src,
            tmp_path,
            capsys,
            r"cannot read .*truncated.* as a MatterSim checkpoint "
            r"\(torch.load with weights_only=True failed: ",
        )


@pytest.mark.parametrize("kind", ["text", "zip", "empty", "json"])
def test_file_of_another_type(kind, tmp_path, capsys):
    src = tmp_path / f"{kind}.pth"
    if kind == "text":
        src.write_text("model: m3gnet\nweights: none\n")
    elif kind == "zip":
        with zipfile.ZipFile(src, "w") as z:
            z.writestr("readme.txt", "not a torch archive")
    elif kind == "empty":
        src.write_bytes(b"")
    else:
        src.write_text('{"model": {}, "model_args": {}}')
    refused(src, tmp_path, capsys, r"cannot read .* as a MatterSim checkpoint")


def test_torch_file_that_is_not_a_checkpoint(tmp_path, capsys):
    src = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), src)
    refused(
        src,
        tmp_path,
        capsys,
        r"is not a MatterSim checkpoint: expected a dict with "
        r"'model' and 'model_args'",
    )


def test_checkpoint_of_another_model(checkpoints, tmp_path, capsys):
    ckpt = torch.load(checkpoints["1M"], weights_only=True)
    ckpt["model_name"] = "graphormer"
    src = tmp_path / "graphormer.pth"
    torch.save(ckpt, src)
    err = refused(
        src,
        tmp_path,
        capsys,
        r"holds a 'graphormer' model; only m3gnet can be "
        r"converted",
    )
    assert "graphormer" in err


def test_malformed_state_dict(checkpoints, tmp_path, capsys):
    ckpt = torch.load(checkpoints["1M"], weights_only=True)
    ckpt["model"] = [1, 2, 3]
    torch.save(ckpt, tmp_path / "list.pth")
    refused(
        tmp_path / "list.pth",
        tmp_path,
        capsys,
        r"'model' is a list, expected a "
        r"state_dict",
    )
    ckpt = torch.load(checkpoints["1M"], weights_only=True)
    ckpt["model"]["final.g.0.linear.weight"] = "weights"
    torch.save(ckpt, tmp_path / "str.pth")
    refused(
        tmp_path / "str.pth",
        tmp_path,
        capsys,
        r"entry 'final.g.0.linear.weight' is not "
        r"a floating-point tensor \(str\)",
    )
    ckpt = torch.load(checkpoints["1M"], weights_only=True)
    ckpt["model_args"] = "m3gnet"
    torch.save(ckpt, tmp_path / "args.pth")
    refused(tmp_path / "args.pth", tmp_path, capsys, r"'model_args' is a str")


def test_non_finite_weights(checkpoints, tmp_path, capsys):
    ckpt = torch.load(checkpoints["1M"], weights_only=True)
    ckpt["model"]["graph_conv.1.gated_mlp_atom.g.0.linear.weight"][3, 4] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pth")
    refused(
        tmp_path / "nan.pth",
        tmp_path,
        capsys,
        r"parameter 'graph_conv.1.gated_mlp_atom."
        r"g.0.linear.weight' holds NaN",
    )


class Payload:
    """Unpickling this calls Path.touch(marker) (pickled as getattr(Path, "touch"))."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class ShellPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


GLOBALS = {Payload: r"(builtins\.)?getattr", ShellPayload: r"(posix|os)\.system"}


@pytest.mark.parametrize("payload", [Payload, ShellPayload])
@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle", "legacy-torch"])
def test_malicious_pickle_does_not_run(payload, fmt, checkpoints, tmp_path, capsys):
    marker = tmp_path / "pwned"
    # the payload works: plain pickle.loads runs it
    pickle.loads(pickle.dumps(payload(marker)))
    assert marker.exists()
    marker.unlink()

    ckpt = torch.load(checkpoints["1M"], weights_only=True)
    ckpt["description"] = payload(marker)  # hidden beside genuine weights
    src = tmp_path / f"evil-{fmt}.pth"
    if fmt == "torch-zip":
        torch.save(ckpt, src)
        with zipfile.ZipFile(src) as z:
            assert any(n.endswith("data.pkl") for n in z.namelist())
    elif fmt == "legacy-torch":
        torch.save(ckpt, src, _use_new_zipfile_serialization=False)
    else:  # a plain pickle (no tensors: they would need a torch global of their own)
        plain = {
            "model_name": "m3gnet",
            "model": {},
            "model_args": ckpt["model_args"],
            "description": payload(marker),
        }
        src.write_bytes(pickle.dumps(plain, protocol=2))
    assert not marker.exists()
    refused(
        src,
        tmp_path,
        capsys,
        rf"^refusing {re.escape(str(src))}: it holds a pickled "
        rf"reference to {GLOBALS[payload]}, which is not a tensor or a plain value \(loading "
        r"it unsafely would run code\).*Nothing was loaded.$",
    )
    assert not marker.exists(), "the pickled payload ran"
