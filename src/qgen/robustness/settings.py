"""RobustnessSpec: every setting that changes a number of the ``robustness`` post-pass.

No torch here: the settings are read and checked where a study or the command line starts.

    >>> RobustnessSpec(corruptions="demo").corruptions
    ('gaussian_noise', 'impulse_noise', 'defocus_blur', 'fog', 'contrast', 'pixelate')
    >>> RobustnessSpec.from_dict({"severities": [1, 3, 5]}).severities
    (1, 3, 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qgen.config import Spec, check_choice, check_int, fail
from qgen.robustness.constants import GROUPS, NAMES, SEVERITIES

#: corruption sets that can be named instead of listing corruptions
PRESETS: dict[str, tuple[str, ...]] = {
    "all": NAMES,
    "benchmark": tuple(n for g in ("noise", "blur", "weather", "digital") for n in GROUPS[g]),
    # the demo's subset (docs/robustness.md, "The demo's subset"): one or two of each group
    # that change a grey 28×28 image in different ways and cost little to make
    "demo": ("gaussian_noise", "impulse_noise", "defocus_blur", "fog", "contrast", "pixelate"),
    **GROUPS,
}
#: where the numbers come from: the released -C files when present (auto), always (released,
#: an error when they are missing) or never (generated)
SOURCES = ("auto", "released", "generated")


def resolve_corruptions(value: Any, where: str = "robustness.corruptions") -> tuple[str, ...]:
    """Corruption names from a list of names and set names (:data:`PRESETS`), or one such
    string (comma-separated allowed); in benchmark order, without repeats. A QgenError
    lists what is allowed."""
    items: list[Any]
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        fail(where, f"must be a list of corruption names, got {value!r}")
    if not items:
        fail(where, "must name at least one corruption")
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, str) and item in PRESETS:
            chosen.update(PRESETS[item])
        elif isinstance(item, str) and item in NAMES:
            chosen.add(item)
        else:
            fail(where, f"unknown corruption {item!r}; allowed: {', '.join(NAMES)}, or a set: "
                        f"{', '.join(PRESETS)}")
    return tuple(n for n in NAMES if n in chosen)


def resolve_severities(value: Any, where: str = "robustness.severities") -> tuple[int, ...]:
    """Severities 1..5 from a list or a comma-separated string, sorted, without repeats."""
    items: list[Any]
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        items = [int(v) if v.lstrip("-").isdigit() else v for v in items]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        fail(where, f"must be a list of integers 1..5, got {value!r}")
    if not items:
        fail(where, "must hold at least one severity (integers 1..5)")
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITIES:
            fail(where, f"severities are integers 1..5, got {s!r}")
    return tuple(sorted(set(items)))


@dataclass(frozen=True)
class RobustnessSpec(Spec):
    """Settings of the corrupted-data evaluation (docs/robustness.md).

    - ``corruptions``: names, or sets of them (``all``, ``benchmark``, ``extra``, ``demo``,
      ``noise``, ``blur``, ``weather``, ``digital``), stored as the names in benchmark order.
    - ``severities``: a subset of 1..5.
    - ``test_examples``: a seeded subset of the run's test split (None: all of it); the
      clean numbers are computed on the same images.
    - ``seed``: seeds that subset and every corruption's draws (each corruption and
      severity has its own stream, so adding one changes no other).
    - ``batch_size``: forward batch size (memory, and float summation order).
    - ``source``: ``auto`` (the released CIFAR-10-C/100-C files when found, else generated),
      ``released`` (the files are required) or ``generated``.
    - ``released_dir``: the folder holding ``<corruption>.npy`` and ``labels.npy``; None
      looks for ``CIFAR-10-C`` / ``CIFAR-100-C`` under the data folder and ``$QGEN_DATA``.
      Where the files are does not change a number, so it is left out of the settings key.
    """

    SECTION: ClassVar[str] = "robustness"

    corruptions: tuple[str, ...] = NAMES
    severities: tuple[int, ...] = SEVERITIES
    test_examples: int | None = None
    seed: int = 0
    batch_size: int = 100
    source: str = "auto"
    released_dir: str | None = None

    def __post_init__(self) -> None:
        w = "robustness."
        object.__setattr__(self, "corruptions", resolve_corruptions(self.corruptions,
                                                                    w + "corruptions"))
        object.__setattr__(self, "severities", resolve_severities(self.severities,
                                                                  w + "severities"))
        if self.test_examples is not None:
            check_int(w + "test_examples", self.test_examples, 1)
        check_int(w + "seed", self.seed, 0, 2**31 - 1)
        check_int(w + "batch_size", self.batch_size, 1, 1 << 20)
        check_choice(w + "source", self.source, SOURCES)
        if self.released_dir is not None:
            if not isinstance(self.released_dir, str) or not self.released_dir:
                fail(w + "released_dir", f"must be a folder name, got {self.released_dir!r}")

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "released_dir" in data and data["released_dir"] is not None:
            data["released_dir"] = str(data["released_dir"])
        return data

    def settings_key(self) -> dict[str, Any]:
        """What must match for a stored record to count: every field but ``released_dir``."""
        d = self.to_dict()
        d.pop("released_dir")
        return d

