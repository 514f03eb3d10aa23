"""Specs: validation messages, canonical JSON and the run-id hash."""

import pytest

from qgen.config import QuantSpec, RunSpec, TrainSpec, parse_bits, set_path
from qgen.errors import QgenError


def test_round_trip_and_stable_id():
    spec = RunSpec.from_dict({"model": {"width": 4}, "quant": {"bits": 4},
                              "train": {"lr": 0.1, "seed": 3}})
    again = RunSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.run_id == spec.run_id
    assert len(spec.run_id) == 16


def test_id_changes_with_every_result_affecting_field():
    base = RunSpec()
    ids = {base.run_id}
    for section, field, value in [("train", "lr", 0.02), ("train", "seed", 1),
                                  ("model", "width", 3), ("data", "train_subset", 100),
                                  ("quant", "w_bits", 4), ("quant", "first_last", "fp")]:
        tree = base.to_dict()
        tree[section][field] = value
        ids.add(RunSpec.from_dict(tree).run_id)
    assert len(ids) == 7


def test_int_and_float_hash_the_same():
    a = RunSpec.from_dict({"train": {"lr": 1}})
    b = RunSpec.from_dict({"train": {"lr": 1.0}})
    assert a.run_id == b.run_id


@pytest.mark.parametrize("tree, fragment", [
    ({"train": {"lr": 0}}, "train.lr: must be > 0.0"),
    ({"train": {"lr": -0.5}}, "train.lr"),
    ({"train": {"optimizer": "rmsprop"}}, "must be one of sgd, adam"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"lrate": 1}}, "unknown field 'lrate'"),
    ({"model": {"dropout": 1.5}}, "model.dropout"),
    ({"quant": {"w_bits": 1}}, "an integer 2..8 or 'fp'"),
    ({"quant": {"bits": 9}}, "quant.w_bits"),
    ({"quant": {"granularity": "row"}}, "tensor, channel"),
    ({"data": {"train_subset": -1}}, "data.train_subset"),
    ({"data": 3}, "data: must be a mapping"),
    ({"spec_version": 99}, "spec_version"),
])
def test_bad_values_name_the_field(tree, fragment):
    with pytest.raises(QgenError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        RunSpec.from_dict(tree)


def test_bits_parsing():
    assert parse_bits("fp") is None and parse_bits(32) is None and parse_bits("4") == 4
    q = QuantSpec.from_dict({"bits": 4, "a_bits": "fp"})
    assert (q.w_bits, q.a_bits, q.label, q.enabled) == (4, None, "w4afp", True)
    assert not QuantSpec().enabled and QuantSpec().label == "fp"


def test_set_path_checks_fields():
    tree: dict = {}
    set_path(tree, "train.lr", 0.5)
    set_path(tree, "quant.bits", 2)
    assert RunSpec.from_dict(tree).train.lr == 0.5
    with pytest.raises(QgenError, match="unknown spec field 'train.speed'"):
        set_path(tree, "train.speed", 1)
    with pytest.raises(QgenError, match="section one of"):
        set_path(tree, "optim.lr", 1)


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        TrainSpec().lr = 3.0  # type: ignore[misc]


def test_unknown_names_rejected():
    from qgen.train import check_names  # names are checked where a spec enters, once

    with pytest.raises(QgenError, match="unknown dataset 'mnist2'"):
        check_names(RunSpec.from_dict({"data": {"name": "mnist2"}}))
    with pytest.raises(QgenError, match="unknown model 'alexnet'"):
        check_names(RunSpec.from_dict({"model": {"name": "alexnet"}}))


def test_bare_off_from_yaml_reads_as_the_off_rule():
    # YAML 1.1 turns a bare `off` (as in --set train.bn_recalibration=off) into false
    from qgen.config import TrainSpec

    assert TrainSpec(bn_recalibration=False).bn_recalibration == "off"
    assert TrainSpec(bn_recalibration=False) == TrainSpec(bn_recalibration="off")
    with pytest.raises(QgenError, match="must be one of full, off; got True"):
        TrainSpec(bn_recalibration=True)


def test_a_later_field_at_its_default_keeps_the_run_id() -> None:
    """train.precision came after spec version 2: at 'fp32' it is left out of the canonical
    JSON, so runs made before it existed keep their ids; another value is a new run."""
    base = RunSpec.from_dict({"train": {"lr": 0.05}})
    assert "precision" not in base.canonical_json()
    assert RunSpec.from_dict({"train": {"lr": 0.05, "precision": "fp32"}}).run_id == base.run_id
    bf16 = RunSpec.from_dict({"train": {"lr": 0.05, "precision": "bf16"}})
    assert bf16.run_id != base.run_id and '"precision":"bf16"' in bf16.canonical_json()
    assert RunSpec.from_dict(bf16.to_dict()).run_id == bf16.run_id
    with pytest.raises(QgenError, match=r"train.precision: must be one of fp32, bf16, fp16"):
        RunSpec.from_dict({"train": {"precision": "int8"}})
