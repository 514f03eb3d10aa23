"""Run-level integer export: the file alone rebuilds a model with bit-identical logits."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from qgen.cli import app
from qgen.config import RunSpec, Runtime
from qgen.data import load_data
from qgen.errors import QgenError
from qgen.train import execute_run, export_run, load_export, load_run_model, predict_logits


@pytest.mark.parametrize("quant", [{"bits": 2}, {"bits": 4, "granularity": "channel"},
                                   {"w_bits": 3, "a_bits": 5, "first_last": "same"}])
def test_export_round_trip_is_bit_exact(tmp_path, tiny_tree, quant):
    spec = RunSpec.from_dict(dict(tiny_tree, quant=quant))
    execute_run(spec, Runtime(out_dir=tmp_path, threads=1))
    run_dir = tmp_path / spec.run_id
    path = export_run(run_dir, tmp_path / "m.int.safetensors")
    rebuilt = load_export(path)
    x = load_data(spec.data).test_x
    assert torch.equal(predict_logits(load_run_model(run_dir), x), predict_logits(rebuilt, x))
    # the codes really are small integers
    from safetensors.torch import load_file

    codes = {k: v for k, v in load_file(str(path)).items() if k.endswith("weight_int")}
    assert codes and all(v.dtype == torch.int8 for v in codes.values())


def test_full_precision_run_cannot_be_exported(tmp_path, tiny_tree):
    spec = RunSpec.from_dict(tiny_tree)
    execute_run(spec, Runtime(out_dir=tmp_path, threads=1))
    with pytest.raises(QgenError, match="full-precision"):
        export_run(tmp_path / spec.run_id)
    res = CliRunner().invoke(app, ["export", str(tmp_path / spec.run_id)])
    assert res.exit_code == 2


def test_corrupt_export_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(QgenError, match="corrupt"):
        load_export(bad)
