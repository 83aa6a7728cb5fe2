"""The weight converter: name table, failures that name the key, atomic output."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convert_weights.cli import main  # noqa: E402
from jmattersim._src.config import M3GNetConfig  # noqa: E402
from jmattersim._src.conversion import ConversionError, convert_checkpoint  # noqa: E402
from jmattersim._src.io import load_model  # noqa: E402
from jmattersim._src.torch_names import table  # noqa: E402


def edited(src: pathlib.Path, dst: pathlib.Path, edit) -> pathlib.Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_table_names_every_upstream_key_once(checkpoints):
    for name, path in checkpoints.items():
        ckpt = torch.load(path, weights_only=True)
        config = M3GNetConfig.from_model_args(ckpt["model_args"])
        keys = [row[0] for row in table(config)]
        assert len(keys) == len(set(keys))
        assert set(keys) == set(ckpt["model"]), name


def test_converted_values_are_upstreams(checkpoints, converted):
    """Every tensor lands where the table says, transposed where torch stores (out, in)."""
    ckpt = torch.load(checkpoints["1M"], weights_only=True)
    model = load_model(converted["1M"])
    for key, path, _, transposed in table(model.config):
        node = model.params
        for part in path.split("/"):
            node = node[part]
        want = ckpt["model"][key].numpy()
        # exact: conversion copies (and transposes) tensors, no arithmetic
        np.testing.assert_array_equal(node, want.T if transposed else want, err_msg=key)
    assert model.config == M3GNetConfig(num_blocks=3, units=128)


def test_missing_key_fails_naming_it(checkpoints, tmp_path, capsys):
    key = "graph_conv.1.three_body.atom_mlp.linear.bias"
    bad = edited(checkpoints["1M"], tmp_path / "bad.pth", lambda c: c["model"].pop(key))
    with pytest.raises(ConversionError, match=f"misses parameter '{key}'"):
        convert_checkpoint(bad)
    assert main([str(bad), str(tmp_path / "out")]) == 1
    assert key in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_wrong_shape_fails_naming_it(checkpoints, tmp_path):
    key = "final.g.0.linear.weight"

    def shrink(c):
        c["model"][key] = c["model"][key][:, :64]

    bad = edited(checkpoints["1M"], tmp_path / "bad.pth", shrink)
    with pytest.raises(ConversionError, match=rf"parameter '{key}' has shape \(128, 64\)"):
        convert_checkpoint(bad)


def test_extra_key_warns_and_fails_under_strict(checkpoints, tmp_path, capsys):
    def add(c):
        c["model"]["legacy.block.weight"] = torch.zeros(3)

    extra = edited(checkpoints["1M"], tmp_path / "extra.pth", add)
    with pytest.warns(UserWarning, match="legacy.block.weight"):
        convert_checkpoint(extra)
    assert main([str(extra), str(tmp_path / "strict"), "--strict"]) == 1
    assert "legacy.block.weight" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    with pytest.warns(UserWarning, match="legacy.block.weight"):
        assert main([str(extra), str(tmp_path / "lenient")]) == 0
    assert (tmp_path / "lenient" / "config.json").is_file()


def test_extra_model_args_are_accepted(checkpoints, tmp_path):
    def add(c):
        c["model_args"]["gradient_checkpointing"] = False

    newer = edited(checkpoints["1M"], tmp_path / "newer.pth", add)
    assert convert_checkpoint(newer).config == M3GNetConfig(num_blocks=3, units=128)


def test_buffer_that_disagrees_with_the_config_fails(checkpoints, tmp_path):
    def change(c):
        c["model"]["rbf.n_1_pi_cutoff"] = c["model"]["rbf.n_1_pi_cutoff"] * 1.1

    bad = edited(checkpoints["1M"], tmp_path / "bad.pth", change)
    with pytest.raises(ConversionError, match="rbf.n_1_pi_cutoff"):
        convert_checkpoint(bad)


def test_interrupted_conversion_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    """An interrupt after Orbax has written the weights, before the config: no
    output directory, and no partial one beside it."""
    out_dir = tmp_path / "models"
    out_dir.mkdir()
    write_text = pathlib.Path.write_text

    def interrupt(self, *args, **kwargs):
        if self.name == "config.json":
            assert (self.parent / "params").is_dir()  # weights already written
            raise KeyboardInterrupt
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", interrupt)
    with pytest.raises(KeyboardInterrupt):
        main([str(checkpoints["1M"]), str(out_dir / "m")])
    assert list(out_dir.iterdir()) == []


def test_existing_output_is_kept_without_overwrite(checkpoints, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert main([str(checkpoints["1M"]), str(tmp_path / "m")]) == 1
    assert "exists" in capsys.readouterr().err


def test_published_name_without_network_says_pass_a_path(tmp_path, monkeypatch, capsys):
    import jmattersim._src.conversion as convert

    monkeypatch.setenv("JMATTERSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(convert, "UPSTREAM_CACHE", tmp_path / "nothing")
    monkeypatch.setattr(convert, "UPSTREAM_URL", "http://127.0.0.1:9/")
    assert main(["mattersim-v1.0.0-1M", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pass a local path" in err and "mattersim-v1.0.0-1M.pth" in err
    assert not (tmp_path / "out").exists()


def test_console_script_and_module(checkpoints, tmp_path):
    exe = pathlib.Path(sys.executable).with_name("jmattersim-convert")
    for cmd, out in [([str(exe)], "a"), ([sys.executable, "-m", "convert_weights"], "b")]:
        proc = subprocess.run(
            cmd + [str(checkpoints["1M"]), str(tmp_path / out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "890224 parameters" in proc.stdout
        assert load_model(tmp_path / out).config.units == 128
