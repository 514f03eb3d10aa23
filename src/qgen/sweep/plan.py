"""Sweep files: parse a YAML grid, resolve presets by name, expand it into validated RunSpecs.

A sweep file holds a base run spec, grid axes over any spec field (dotted names, as in
:func:`qgen.config.set_path`), and seeds::

    name: demo
    base:                      # sections data / model / quant / train, as in `qgen train -c`
      data: {name: fashion-mnist, train_subset: 4000}
      model: {name: nin, depth: 2, width: 2}
    axes:                      # the grid: the product of every axis, in file order
      quant.bits: [fp, 8, 4, 2]
      model.width: [1, 2]
    seeds: [0, 1]              # shorthand for an innermost axis over train.seed
    study: {...}               # optional: what `qgen study` does after training

A sweep argument that is not an existing path is looked up by name among the presets shipped
in ``qgen/configs/`` (``demo``, ``cifar10-nin``, ``cifar100-nin``). Every grid point becomes a
:class:`~qgen.config.RunSpec`; points that give the same spec (same run id) are kept once and
counted in :attr:`Plan.duplicates`. Every mistake is a :class:`~qgen.errors.QgenError` naming the
key and what is allowed.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qgen.config import RunSpec, set_path
from qgen.errors import QgenError
from qgen.io import read_yaml

TOP_KEYS = ("name", "description", "base", "axes", "seeds", "study")
SECTIONS = ("data", "model", "quant", "train")


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: ``base`` spec tree, ordered ``axes`` and ``seeds`` (None: the base's).

    ``source`` is where it was read from (a path, or ``preset:<name>``).
    """

    name: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    seeds: list[int] | None = None
    description: str = ""
    source: str = ""
    #: what ``qgen study`` does after training (post-passes, report); read by qgen.study
    study: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The sweep file's resolved content (what ``sweep.json`` records)."""
        out: dict[str, Any] = {"name": self.name, "base": copy.deepcopy(self.base),
                               "axes": copy.deepcopy(self.axes)}
        if self.seeds is not None:
            out["seeds"] = list(self.seeds)
        if self.description:
            out["description"] = self.description
        if self.study:
            out["study"] = copy.deepcopy(self.study)
        return out


@dataclass(frozen=True)
class Plan:
    """The runs a sweep asks for, in grid order, each once.

    ``points`` pairs each unique spec with the axis values that produced it (first occurrence);
    ``duplicates`` lists ``(run_id, axis values)`` of later grid points that repeat a run.
    """

    sweep: Sweep
    specs: list[RunSpec]
    points: list[dict[str, Any]]
    grid_size: int
    duplicates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def run_ids(self) -> list[str]:
        """Run ids in grid order."""
        return [s.run_id for s in self.specs]

    def with_weights(self, weights: str | Path | None) -> Plan:
        """The plan with every spec naming the start checkpoint ``weights`` by SHA-256
        (:func:`qgen.train.spec_with_weights`); the plan itself when ``weights`` is None."""
        if weights is None:
            return self
        from dataclasses import replace

        from qgen.models.zoo import WEIGHTS_OPTION
        from qgen.train.run import spec_with_weights

        specs = [spec_with_weights(self.specs[0], weights)]
        sha = specs[0].model.option(WEIGHTS_OPTION)  # the file is hashed once, not per run
        specs += [s.replace(model=s.model.replace(
            options={**dict(s.model.options), WEIGHTS_OPTION: sha})) for s in self.specs[1:]]
        return replace(self, specs=specs)


def preset_dir() -> Path:
    """The folder of the YAML presets shipped with qgen."""
    return Path(str(resources.files("qgen") / "configs"))


def preset_names() -> list[str]:
    """Names of the shipped presets (file names without ``.yaml``), sorted."""
    folder = preset_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_sweep_path(arg: str | Path) -> Path:
    """An existing file as given, else the preset ``qgen/configs/<arg>.yaml``."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise QgenError(f"{arg}: is a directory; give a sweep YAML file or a preset name "
                        f"({', '.join(preset_names())})")
    name = str(arg)
    if "/" not in name and "\\" not in name:
        candidate = preset_dir() / f"{name.removesuffix('.yaml')}.yaml"
        if candidate.is_file():
            return candidate
    raise QgenError(f"{arg}: no such sweep file or preset; presets: {', '.join(preset_names())}")


def load_sweep(arg: str | Path) -> Sweep:
    """Read and check a sweep file (or preset name); see the module docstring for the format."""
    path = resolve_sweep_path(arg)
    data = read_yaml(path)
    is_preset = path.parent.resolve() == preset_dir().resolve()
    source = f"preset:{path.stem}" if is_preset else str(path)
    return parse_sweep(data, where=str(path), default_name=path.stem, source=source)


def parse_sweep(data: Any, where: str = "sweep", default_name: str = "sweep",
                source: str = "") -> Sweep:
    """Check the structure of a loaded sweep mapping and return a :class:`Sweep`."""
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise QgenError(f"{where}: a sweep file must be a mapping with keys "
                        f"{', '.join(TOP_KEYS)}; got {got}")
    unknown = sorted(str(k) for k in data if k not in TOP_KEYS)
    if unknown:
        raise QgenError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise QgenError(f"{where}: name must be a non-empty string, got {name!r}")
    description = data.get("description") or ""
    base = _parse_base(data.get("base"), where)
    axes = _parse_axes(data.get("axes"), where)
    seeds = _parse_seeds(data.get("seeds"), where)
    if seeds is not None and "train.seed" in axes:
        raise QgenError(f"{where}: seeds and an axis over train.seed both set the seed; "
                        "keep one of them")
    study = data.get("study") or {}
    if not isinstance(study, Mapping):
        raise QgenError(f"{where}: study must be a mapping (what `qgen study` does after "
                        f"training), got {type(study).__name__}")
    return Sweep(name=name, base=base, axes=axes, seeds=seeds, description=str(description),
                 source=source or where, study=copy.deepcopy(dict(study)))


def _parse_base(base: Any, where: str) -> dict[str, Any]:
    if base is None:
        return {}
    if not isinstance(base, Mapping):
        raise QgenError(f"{where}: base must be a mapping with sections {', '.join(SECTIONS)}; "
                        f"got {type(base).__name__}")
    out: dict[str, Any] = {}
    for key, value in base.items():
        if key not in SECTIONS:
            raise QgenError(f"{where}: base: unknown section {key!r}; "
                            f"allowed: {', '.join(SECTIONS)}")
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise QgenError(f"{where}: base.{key} must be a mapping of fields, "
                            f"got {type(value).__name__}")
        out[key] = copy.deepcopy(dict(value))
    try:
        RunSpec.from_dict(out)
    except QgenError as exc:
        raise QgenError(f"{where}: base: {exc}") from None
    return out


def _parse_axes(axes: Any, where: str) -> dict[str, list[Any]]:
    if axes is None:
        return {}
    if not isinstance(axes, Mapping):
        raise QgenError(f"{where}: axes must be a mapping of dotted spec field -> list of "
                        f"values (e.g. quant.bits: [fp, 8, 4, 2]); got {type(axes).__name__}")
    out: dict[str, list[Any]] = {}
    for key, values in axes.items():
        if not isinstance(key, str):
            raise QgenError(f"{where}: axes: axis names are dotted spec fields like "
                            f"model.width; got {key!r}")
        try:
            set_path({}, key, None)  # validates the field name only
        except QgenError as exc:
            raise QgenError(f"{where}: axes: {exc}") from None
        if not isinstance(values, list):
            raise QgenError(f"{where}: axes.{key}: values must be a non-empty list "
                            f"(e.g. [1, 2]); got {type(values).__name__}")
        if not values:
            raise QgenError(f"{where}: axes.{key}: empty list, so the grid has no runs; "
                            "give at least one value or remove the axis")
        out[key] = copy.deepcopy(values)
    return out


def _parse_seeds(seeds: Any, where: str) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list):
        raise QgenError(f"{where}: seeds must be a non-empty list of integers >= 0, "
                        f"got {type(seeds).__name__}")
    if not seeds:
        raise QgenError(f"{where}: seeds: empty list, so the grid has no runs; give at least "
                        "one seed or leave seeds out (the base's train.seed is used)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise QgenError(f"{where}: seeds: each seed must be an integer >= 0, got {s!r}")
    return list(seeds)


def _point_spec(base: dict[str, Any], point: Mapping[str, Any]) -> RunSpec:
    tree = copy.deepcopy(base)
    for key, value in point.items():
        set_path(tree, key, value)
    return RunSpec.from_dict(tree)


def expand(sweep: Sweep, check_names: bool = True) -> Plan:
    """Every grid point of ``sweep`` as a validated RunSpec, duplicates removed.

    Each axis value is first checked on its own against the base, so a bad value is reported
    as ``axes.<field>[i]`` rather than somewhere in the product. ``check_names`` also checks
    dataset and model names against the registries (imports the data and model packages).
    """
    checked: set[tuple[str, str]] = set()

    def _names_ok(spec: RunSpec) -> RunSpec:
        names = (spec.data.name, spec.model.name)
        if check_names and names not in checked:
            from qgen.train.run import check_names as check_spec_names

            check_spec_names(spec)
            checked.add(names)
        return spec

    axes = dict(sweep.axes)
    if sweep.seeds is not None:
        axes["train.seed"] = list(sweep.seeds)
    for key, values in axes.items():
        label = "seeds" if key == "train.seed" and sweep.seeds is not None else f"axes.{key}"
        for i, value in enumerate(values):
            try:
                _names_ok(_point_spec(sweep.base, {key: value}))
            except QgenError as exc:
                raise QgenError(f"{sweep.source}: {label}[{i}] = {value!r}: {exc}") from None
    keys = list(axes)
    specs: list[RunSpec] = []
    points: list[dict[str, Any]] = []
    duplicates: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    grid_size = 0
    for combo in itertools.product(*(axes[k] for k in keys)):
        grid_size += 1
        point = dict(zip(keys, combo, strict=True))
        try:
            spec = _names_ok(_point_spec(sweep.base, point))
        except QgenError as exc:
            where = f"grid point {point}" if point else "base"
            raise QgenError(f"{sweep.source}: {where}: {exc}") from None
        rid = spec.run_id
        if rid in seen:
            duplicates.append((rid, point))
            continue
        seen.add(rid)
        specs.append(spec)
        points.append(point)
    if not specs:  # unreachable with non-empty axes; kept as a guard for future axis kinds
        raise QgenError(f"{sweep.source}: the grid is empty")
    return Plan(sweep=sweep, specs=specs, points=points, grid_size=grid_size,
                duplicates=duplicates)
