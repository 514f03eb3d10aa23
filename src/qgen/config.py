"""Specs: frozen, validated dataclasses that describe a run, and its content-hash id.

A :class:`RunSpec` holds everything that changes a run's numbers (data, model, quantization,
training). Its canonical JSON (sorted keys, no whitespace) hashed with SHA-256 is the run id,
so the same spec always lands in the same run directory. Settings that do not change the
numbers (paths, device, threads, logging) live in :class:`Runtime`, outside the hash.

Every field is checked on construction; a bad value raises :class:`~qgen.errors.QgenError`
naming the field and what is allowed::

    >>> spec = RunSpec.from_dict({"model": {"name": "nin", "width": 2}, "train": {"lr": 0.01}})
    >>> spec.run_id  # doctest: +SKIP
    '3f5c0a9e1b7d2c44'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from qgen.errors import QgenError

#: 2: QuantSpec gained the step-size rules (step_positivity, step_lr_scale, step_momentum,
#: step_max_rel_change) and TrainSpec the BatchNorm re-estimation. A version-1 spec (no such
#: fields) was trained without them and reads as ``step_positivity='clamp'``,
#: ``bn_recalibration='off'`` with the other rules off; see :func:`migrate_spec`.
SPEC_VERSION = 2
BITS_ALLOWED = "an integer 2..8 or 'fp'"


def fail(where: str, msg: str) -> None:
    """Raise a QgenError ``"<where>: <msg>"`` (``where`` names the field)."""
    raise QgenError(f"{where}: {msg}")


def check_int(where: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """An integer (not a bool) in [lo, hi], else a QgenError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"must be an integer, got {value!r}")
    if lo is not None and value < lo or hi is not None and value > hi:
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        fail(where, f"must be in {rng}, got {value}")


def check_float(where: str, value: Any, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> None:
    """A number (not a bool, not NaN) in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(where, f"must be a number, got {value!r}")
    if value != value:  # NaN
        fail(where, "must be a number, got nan")
    if lo is not None and (value <= lo if lo_open else value < lo):
        fail(where, f"must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        fail(where, f"must be <= {hi}, got {value}")


def float_field(obj: Any, name: str, where: str, lo: float | None = None,
                 hi: float | None = None, lo_open: bool = False) -> None:
    """Check a float field and store it as float, so 1 and 1.0 hash the same."""
    value = getattr(obj, name)
    check_float(where, value, lo, hi, lo_open)
    object.__setattr__(obj, name, float(value))


def check_choice(where: str, value: Any, choices: tuple[str, ...]) -> None:
    """One of ``choices``, else a QgenError listing them."""
    if value not in choices:
        fail(where, f"must be one of {', '.join(choices)}; got {value!r}")


def parse_bits(value: Any, where: str = "bits") -> int | None:
    """Parse a bit width: 2..8, or 'fp'/None/32 for full precision (returned as None)."""
    if value is None or (isinstance(value, str) and value.lower() in ("fp", "float", "none")):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 32:
            return None
        if 2 <= value <= 8:
            return value
    raise QgenError(f"{where}: must be {BITS_ALLOWED}; got {value!r}")


def bits_label(bits: int | None) -> str:
    """'fp' for full precision, else the number as a string."""
    return "fp" if bits is None else str(bits)


class Spec:
    """Shared behaviour: dict round trip with unknown-field errors.

    ``LATER_FIELDS`` names fields added after spec version 2 was fixed; such a field is left
    out of :meth:`to_dict` (and so of the run id) while it holds its default, so every run
    made before the field existed keeps its id, and a run that sets it gets a new one.
    """

    SECTION: ClassVar[str] = ""
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (nested specs as dicts, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name in self.LATER_FIELDS and v == f.default:
                continue
            if isinstance(v, Spec):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = [list(x) if isinstance(x, tuple) else x for x in v]
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Any:
        """Build from a mapping; an unknown field or a non-mapping is a QgenError."""
        if data is not None and not isinstance(data, Mapping):
            raise QgenError(f"{cls.SECTION}: must be a mapping, got {type(data).__name__}")
        data = dict(data or {})
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            raise QgenError(f"{cls.SECTION}: unknown field {unknown[0]!r}; "
                            f"allowed: {', '.join(sorted(names))}")
        return cls(**cls._convert(data))

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class DataSpec(Spec):
    """Which data, and how it is prepared.

    ``train_subset`` draws a seeded subset of the training set (``subset_seed``); the paper's
    protocol varies the training-set size. Normalization uses training-set statistics only.
    ``channels``/``input_size`` convert grey to 3 channels and pad/resize to a model's input.
    """

    SECTION: ClassVar[str] = "data"

    name: str = "fashion-mnist"
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    normalize: bool = True
    augment: bool = False
    channels: int | None = None
    input_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            fail("data.name", f"must be a dataset name, got {self.name!r}")
        for nm in ("train_subset", "test_subset", "input_size"):
            if getattr(self, nm) is not None:
                check_int(f"data.{nm}", getattr(self, nm), 1)
        check_int("data.subset_seed", self.subset_seed, 0)
        if self.channels is not None:
            check_int("data.channels", self.channels, 1, 3)
            if self.channels == 2:
                fail("data.channels", "must be 1 or 3, got 2")
        for nm in ("normalize", "augment"):
            if not isinstance(getattr(self, nm), bool):
                fail(f"data.{nm}", f"must be true or false, got {getattr(self, nm)!r}")


@dataclass(frozen=True)
class ModelSpec(Spec):
    """Which network. ``depth``/``width`` mean what each model's docstring says
    (NiN: blocks and 25·width channels; ResNet: 20/32/56/18; VGG: 11/16; ViT: blocks).

    ``options``: model-specific settings that change the numbers and so belong to the run's
    identity (e.g. a model-zoo architecture's keyword arguments, or the SHA-256 of the
    checkpoint it starts from), as name → JSON scalar; stored sorted by name.
    """

    SECTION: ClassVar[str] = "model"

    name: str = "nin"
    depth: int = 2
    width: int = 2
    dropout: float = 0.0
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            fail("model.name", f"must be a model name, got {self.name!r}")
        check_int("model.depth", self.depth, 1, 200)
        check_int("model.width", self.width, 1, 64)
        float_field(self, "dropout", "model.dropout", 0.0, 0.95)
        opts = self.options
        if isinstance(opts, Mapping):
            opts = tuple(opts.items())
        if not isinstance(opts, (list, tuple)):
            fail("model.options", f"must be a mapping of name to value, got {opts!r}")
        pairs = []
        for item in opts:
            if not (isinstance(item, (list, tuple)) and len(item) == 2
                    and isinstance(item[0], str) and item[0]):
                fail("model.options", f"must map names to values, got {item!r}")
            key, value = item
            if not (value is None or isinstance(value, (str, bool, int, float))):
                fail(f"model.options.{key}", "must be a string, number, boolean or null, "
                     f"got {type(value).__name__}")
            pairs.append((key, value))
        if len({k for k, _ in pairs}) != len(pairs):
            fail("model.options", "a name appears twice")
        object.__setattr__(self, "options", tuple(sorted(pairs)))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; ``options`` as a name → value mapping."""
        out = super().to_dict()
        out["options"] = dict(self.options)
        return out

    def option(self, name: str, default: Any = None) -> Any:
        """The value of option ``name`` (``default`` when absent)."""
        return dict(self.options).get(name, default)


@dataclass(frozen=True)
class QuantSpec(Spec):
    """LSQ quantization-aware training settings (``None`` bits = full precision).

    ``first_last``: '8bit' (LSQ's choice), 'fp', or 'same' for the first and last layer.
    ``overrides``: (name pattern, w_bits, a_bits) triples; fnmatch patterns on module names.
    ``step_weight_decay``: apply weight decay to step sizes (LSQ: no).

    How step sizes are kept usable (docs/quantization.md has the measurements behind them):

    - ``step_positivity``: 'abs' quantizes with max(|s|, eps), so an optimizer overshoot below
      zero is harmless; 'clamp' projects the parameter onto [1e-8, inf) before each training
      forward, the rule of spec version 1, kept only to reproduce runs made with it (it can
      kill a layer).
    - ``step_lr_scale``: the step sizes' learning rate is ``train.lr`` times this.
    - ``step_momentum``: the step sizes' SGD momentum (None: ``train.momentum``).
    - ``step_max_rel_change``: the most a step may change, relative to its value, in one
      update (default 0.5: at most halved or 1.5×; None: no bound); a larger update is
      shortened to it and SGD's momentum buffer is set to the update actually taken, so
      optimizer state matches the parameter. Without it, momentum carried a first-layer
      step from 0.0046 to 4e-7 in eight accelerating updates and the next update to 67
      (a 4-bit demo run that then fell to 35%); with it the same run trains normally.
    """

    SECTION: ClassVar[str] = "quant"

    w_bits: int | None = None
    a_bits: int | None = None
    granularity: str = "tensor"
    first_last: str = "8bit"
    overrides: tuple[tuple[str, int | None, int | None], ...] = ()
    step_weight_decay: bool = False
    step_positivity: str = "abs"
    step_lr_scale: float = 1.0
    step_momentum: float | None = None
    step_max_rel_change: float | None = 0.5

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> QuantSpec:
        """Also accepts ``bits`` as shorthand for equal weight and activation bits."""
        if data is not None and not isinstance(data, Mapping):
            raise QgenError(f"quant: must be a mapping, got {type(data).__name__}")
        data = dict(data or {})
        if "bits" in data:
            b = data.pop("bits")
            data.setdefault("w_bits", b)
            data.setdefault("a_bits", b)
        return super().from_dict(data)

    def __post_init__(self) -> None:
        object.__setattr__(self, "w_bits", parse_bits(self.w_bits, "quant.w_bits"))
        object.__setattr__(self, "a_bits", parse_bits(self.a_bits, "quant.a_bits"))
        check_choice("quant.granularity", self.granularity, ("tensor", "channel"))
        check_choice("quant.first_last", self.first_last, ("8bit", "fp", "same"))
        if not isinstance(self.overrides or (), (list, tuple)):
            fail("quant.overrides", "must be a list of [name_pattern, w_bits, a_bits], got "
                 f"{self.overrides!r}")
        ov = []
        for i, item in enumerate(self.overrides or ()):
            ok = isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)
            if not ok:
                fail(f"quant.overrides[{i}]", "must be [name_pattern, w_bits, a_bits]")
            ov.append((item[0], parse_bits(item[1], f"quant.overrides[{i}].w_bits"),
                       parse_bits(item[2], f"quant.overrides[{i}].a_bits")))
        object.__setattr__(self, "overrides", tuple(ov))
        if not isinstance(self.step_weight_decay, bool):
            fail("quant.step_weight_decay", "must be true or false")
        check_choice("quant.step_positivity", self.step_positivity, ("abs", "clamp"))
        float_field(self, "step_lr_scale", "quant.step_lr_scale", 0.0, 100.0, lo_open=True)
        if self.step_momentum is not None:
            float_field(self, "step_momentum", "quant.step_momentum", 0.0, 0.999)
        if self.step_max_rel_change is not None:
            float_field(self, "step_max_rel_change", "quant.step_max_rel_change", 0.0, 100.0,
                         lo_open=True)

    @property
    def enabled(self) -> bool:
        """True when any quantizer would be inserted."""
        return (self.w_bits is not None or self.a_bits is not None
                or any(o[1] is not None or o[2] is not None for o in self.overrides))

    @property
    def label(self) -> str:
        """Short name of the bit setting: 'fp', 'w4a4', 'w8afp', …"""
        if self.w_bits is None and self.a_bits is None:
            return "fp"
        return f"w{bits_label(self.w_bits)}a{bits_label(self.a_bits)}"


@dataclass(frozen=True)
class TrainSpec(Spec):
    """Optimizer, schedule and the stop rule (train cross-entropy <= ``target_ce``).

    ``bn_recalibration``: before each stop-rule check and before the final evaluation, the
    BatchNorm running statistics are re-estimated with one pass over the training set in
    training mode ('full'; 'off' keeps the running averages of training). Quantization-aware
    training makes the latent weights oscillate between neighbouring codes, so the batch
    statistics jump from step to step and their running average describes no state the
    network is in: measured on the demo setting, 2 of 24 quantized runs lost 20–25 points of
    accuracy to it (an 8-bit NiN at 56% instead of 81%), all recovered by re-estimation
    (Nagel et al. 2022, "Overcoming Oscillations in Quantization-Aware Training", propose
    the same). Applied to every run, full precision included, so the protocol is the same
    for all bit widths.

    ``precision``: 'fp32', or mixed precision for the forward and backward passes ('bf16' on
    any device, 'fp16' with loss scaling on CUDA only); LSQ quantizers always compute in
    float32. It changes the numbers, so it is part of the run id (when not 'fp32').

    ``compile``: train through ``torch.compile`` (inductor; CPU needs a C++ compiler, CUDA
    Triton). LSQ's quantizers are traced as plain ops that inductor fuses into the layers
    around them. Compiled code rounds differently, so a compiled run is another run (its id
    differs), not a faster copy of the eager one; evaluation stays eager.
    """

    SECTION: ClassVar[str] = "train"
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("precision", "compile")

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    batch_size: int = 32
    max_epochs: int = 20
    target_ce: float = 0.01
    seed: int = 0
    bn_recalibration: str = "full"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        check_choice("train.optimizer", self.optimizer, ("sgd", "adam"))
        check_choice("train.precision", self.precision, ("fp32", "bf16", "fp16"))
        if not isinstance(self.compile, bool):
            fail("train.compile", f"must be true or false, got {self.compile!r}")
        if self.bn_recalibration is False:  # YAML 1.1 reads a bare `off` as false
            object.__setattr__(self, "bn_recalibration", "off")
        check_choice("train.bn_recalibration", self.bn_recalibration, ("full", "off"))
        float_field(self, "lr", "train.lr", 0.0, 10.0, lo_open=True)
        float_field(self, "momentum", "train.momentum", 0.0, 0.999)
        float_field(self, "weight_decay", "train.weight_decay", 0.0, 1.0)
        check_choice("train.schedule", self.schedule, ("constant", "cosine"))
        check_int("train.batch_size", self.batch_size, 1, 65536)
        check_int("train.max_epochs", self.max_epochs, 1, 100000)
        float_field(self, "target_ce", "train.target_ce", 0.0, 10.0)
        check_int("train.seed", self.seed, 0, 2**31 - 1)


@dataclass(frozen=True)
class RunSpec(Spec):
    """Everything that determines a run's numbers; its hash is the run id."""

    SECTION: ClassVar[str] = "spec"

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        sections = {"data": DataSpec, "model": ModelSpec, "quant": QuantSpec, "train": TrainSpec}
        out = {}
        for key, sec in sections.items():
            val = data.get(key)
            if val is not None and not isinstance(val, (Mapping, sec)):
                raise QgenError(f"{key}: must be a mapping, got {type(val).__name__}")
            out[key] = val if isinstance(val, sec) else sec.from_dict(val)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["spec_version"] = SPEC_VERSION
        return out

    def __post_init__(self) -> None:
        if self.train.compile and self.quant.enabled and self.quant.step_positivity == "clamp":
            fail("train.compile", "the 'clamp' step rule (spec version 1) projects the step "
                 "in place inside the forward and trains eagerly only; use "
                 "quant.step_positivity: abs or train.compile: false")
        if self.quant.step_momentum is not None and self.train.optimizer != "sgd":
            fail("quant.step_momentum", f"is an SGD setting; train.optimizer is "
                  f"{self.train.optimizer!r} (leave step_momentum null)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunSpec:
        """Build from a mapping (a version-1 spec is migrated, see :func:`migrate_spec`)."""
        if data is not None and not isinstance(data, Mapping):
            raise QgenError(f"spec: must be a mapping, got {type(data).__name__}")
        return super().from_dict(migrate_spec(data))

    def canonical_json(self) -> str:
        """Sorted-key, whitespace-free JSON: the bytes the run id hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        """First 16 hex digits of SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def migrate_spec(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A spec mapping of any readable version as the current version's mapping (without the
    ``spec_version`` key).

    Version 1 trained quantized runs with the step projected onto [1e-8, inf)
    (``step_positivity='clamp'``), had no other step rules and kept BatchNorm's running
    averages (``bn_recalibration='off'``), so a version-1 spec says so.
    """
    data = dict(data or {})
    version = data.pop("spec_version", SPEC_VERSION)
    if version == 1:
        quant, train = data.get("quant"), data.get("train")
        if quant is None or isinstance(quant, Mapping):
            data["quant"] = {**(quant or {}), "step_positivity": "clamp"}
        if quant is None or isinstance(quant, Mapping):
            data["quant"]["step_max_rel_change"] = None
        if train is None or isinstance(train, Mapping):
            data["train"] = {**(train or {}), "bn_recalibration": "off"}
    elif version != SPEC_VERSION:
        raise QgenError(f"spec_version: this qgen reads versions 1 and {SPEC_VERSION}, "
                        f"got {version!r}")
    return data


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, checking that the field exists."""
    section, _, name = dotted.partition(".")
    sections = {"data": DataSpec, "model": ModelSpec, "quant": QuantSpec, "train": TrainSpec}
    if section not in sections or not name:
        raise QgenError(f"unknown spec field {dotted!r}; fields look like "
                        f"section.name with section one of {', '.join(sections)}")
    allowed = {f.name for f in fields(sections[section])}
    if section == "quant":
        allowed.add("bits")
    if name not in allowed:
        raise QgenError(f"unknown spec field {dotted!r}; allowed in {section}: "
                        f"{', '.join(sorted(allowed))}")
    tree.setdefault(section, {})[name] = value


@dataclass(frozen=True)
class Runtime:
    """Settings that do not change a run's numbers: not hashed.

    ``resume``: save a run's training state at every epoch boundary and, when the same run
    is started again after being killed, continue from it (the result is the uninterrupted
    run's; see :mod:`qgen.train.resume`). ``force`` starts from scratch anyway.
    ``resume_store``: the store whose ``.resume/`` folder holds that state when it is not
    ``out_dir`` (a Ray task trains into a node-local folder but keeps its state in the shared
    store, so a run whose node died continues elsewhere).
    """

    out_dir: Path = Path("runs")
    data_dir: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    quiet: bool = False
    download: bool = False
    force: bool = False
    resume: bool = True
    resume_store: Path | None = None
    #: a checkpoint file a zoo model starts from (its SHA-256 is in ``model.options``)
    weights: Path | None = None
