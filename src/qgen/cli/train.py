"""``qgen train``, ``qgen export``, ``qgen datasets`` and ``qgen write-folder``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qgen.cli.common import (
    DEVICE_OPT,
    QUIET_OPT,
    THREADS_OPT,
    check_data_dir,
    check_file_path,
    check_run_options,
    console,
    make_progress,
    parse_settings,
    say,
    user_errors,
)
from qgen.config import RunSpec, Runtime, parse_bits, set_path
from qgen.errors import QgenError
from qgen.io import read_yaml

#: the sections of a run spec file
SECTIONS = ("data", "model", "quant", "train")
#: the common flags of ``qgen train`` and the spec fields they set (everything else: --set)
TRAIN_FLAGS = {
    "dataset": "data.name", "train_subset": "data.train_subset", "model": "model.name",
    "depth": "model.depth", "width": "model.width", "optimizer": "train.optimizer",
    "lr": "train.lr",
    "momentum": "train.momentum", "batch_size": "train.batch_size",
    "epochs": "train.max_epochs", "target_ce": "train.target_ce", "seed": "train.seed",
}


def train_one(spec: RunSpec, runtime: Runtime, label: str = "") -> dict[str, Any]:
    """Run one spec with a progress bar over the steps of each epoch."""
    from qgen.train import execute_run

    with make_progress(runtime.quiet) as progress:
        task = progress.add_task(f"{label}epoch 1", total=None, info="")
        state = {"epoch": 1}

        def on_step(i: int, n: int, loss: float) -> None:
            progress.update(task, completed=i, total=n, info=f"loss {loss:.4f}")

        def on_epoch(rec: dict[str, Any]) -> None:
            state["epoch"] = rec["epoch"] + 1
            progress.update(task, description=f"{label}epoch {state['epoch']}", completed=0)

        return execute_run(spec, runtime, on_step=on_step, on_epoch=on_epoch)


def results_table(rows: list[tuple[str, dict[str, Any]]], title: str) -> Table:
    """Train/test loss, accuracy and the two gaps, one row per run."""
    table = Table(title=title)
    for col in ("run", "status", "epochs", "train loss", "test loss", "loss gap",
                "train acc", "test acc", "acc gap"):
        table.add_column(col, justify="right" if col not in ("run", "status") else "left")
    for label, r in rows:
        m = r["metrics"]
        status = r["status"] + ("" if r.get("health", {}).get("healthy", True)
                                else " UNHEALTHY")
        table.add_row(label, status, f"{r['epochs']:.2f}", f"{m['train_loss']:.4f}",
                      f"{m['test_loss']:.4f}", f"{m['loss_gap']:.4f}",
                      f"{100 * m['train_accuracy']:.2f}", f"{100 * m['test_accuracy']:.2f}",
                      f"{100 * m['acc_gap']:.2f}")
    return table


def spec_from_options(config: Path | None, flags: dict[str, Any],
                      settings: list[str] | None) -> RunSpec:
    """A RunSpec from a YAML file, then the common flags, then ``--set`` pairs (later wins);
    dataset and model names are checked against the registries."""
    from qgen.train import check_names

    tree: dict[str, Any] = {}
    if config is not None:
        loaded = read_yaml(config)
        if not isinstance(loaded, dict):
            got = "an empty file" if loaded is None else f"a {type(loaded).__name__}"
            raise QgenError(f"{config}: must hold a mapping with sections "
                            f"{', '.join(SECTIONS)}; got {got}")
        for key, value in loaded.items():
            if key in SECTIONS and value is not None and not isinstance(value, dict):
                raise QgenError(f"{config}: section {key!r} must be a mapping, got "
                                f"{type(value).__name__}")
        # other keys (spec_version of a spec.json, or a mistake) are RunSpec's to judge
        tree = {k: dict(v or {}) if k in SECTIONS else v for k, v in loaded.items()}
    for key, value in flags.items():
        if value is not None:
            set_path(tree, key, value)
    for key, value in parse_settings(settings, "run spec").items():
        set_path(tree, key, value)
    return check_names(RunSpec.from_dict(tree))


def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run spec."),
    dataset: str | None = typer.Option(None, help="Dataset name (see `qgen datasets`)."),
    train_subset: int | None = typer.Option(None, help="Seeded training subset size."),
    model: str | None = typer.Option(
        None, help="nin, resnet, vgg, vit, or a zoo model tv:<arch> / timm:<arch>."),
    depth: int | None = typer.Option(None, help="Model depth (NiN blocks, ResNet 20/32/56/18…)."),
    width: int | None = typer.Option(None, help="Model width (NiN: 25·width channels)."),
    optimizer: str | None = typer.Option(None, help="sgd or adam."),
    lr: float | None = typer.Option(None, help="Learning rate (> 0)."),
    momentum: float | None = typer.Option(None, help="SGD momentum."),
    batch_size: int | None = typer.Option(None),
    epochs: int | None = typer.Option(None, help="Maximum number of epochs."),
    target_ce: float | None = typer.Option(None, help="Stop when train cross-entropy <= this."),
    seed: int | None = typer.Option(None),
    bits: str | None = typer.Option(None, help="Weight and activation bits: 2..8 or fp."),
    w_bits: str | None = typer.Option(None, help="Weight bits: 2..8 or fp."),
    a_bits: str | None = typer.Option(None, help="Activation bits: 2..8 or fp."),
    settings: list[str] | None = typer.Option(
        None, "--set", help="Any spec field: section.name=value, e.g. train.schedule=cosine, "
                            "quant.first_last=fp, data.augment=true; repeatable."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Run store directory."),
    data_dir: Path | None = typer.Option(None, help="Where the dataset files are."),
    download: bool = typer.Option(False, help="Download the dataset if missing (online only)."),
    device: str = DEVICE_OPT,
    threads: int | None = THREADS_OPT,
    force: bool = typer.Option(False, help="Retrain even if the run exists."),
    weights: Path | None = typer.Option(
        None, help="Checkpoint a zoo model starts from (safetensors, or a torch state_dict "
                   "read with weights_only); its SHA-256 joins the spec."),
    quiet: bool = QUIET_OPT,
) -> None:
    """Train one model (YAML, then flags, then --set) and write runs/<id>/."""
    from qgen.train import spec_with_weights

    with user_errors():
        values = dict(dataset=dataset, train_subset=train_subset, model=model, depth=depth,
                      width=width, optimizer=optimizer, lr=lr, momentum=momentum,
                      batch_size=batch_size, epochs=epochs, target_ce=target_ce, seed=seed)
        flags = {TRAIN_FLAGS[k]: v for k, v in values.items()}
        if bits is not None:
            flags["quant.w_bits"] = flags["quant.a_bits"] = parse_bits(bits, "--bits")
        if w_bits is not None:
            flags["quant.w_bits"] = parse_bits(w_bits, "--w-bits")
        if a_bits is not None:
            flags["quant.a_bits"] = parse_bits(a_bits, "--a-bits")
        spec = spec_with_weights(spec_from_options(config, flags, settings), weights)
        check_run_options(device, threads, data_dir)
        runtime = Runtime(out_dir=out, data_dir=data_dir, device=device, threads=threads,
                          quiet=quiet, download=download, force=force, weights=weights)
        result = train_one(spec, runtime)
        if not quiet:
            console.print(results_table([(spec.quant.label, result)],
                                        f"{spec.model.name} on {spec.data.name}, "
                                        f"run {spec.run_id}"))
        say(str(Path(out) / spec.run_id))


def export(
    run_dir: Path = typer.Argument(..., help="A quantized run directory (runs/<id>)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="File to write (default RUN_DIR/model.int.safetensors)."),
) -> None:
    """Export a QAT run as int8 weight codes + step sizes (safetensors)."""
    from qgen.train import export_run

    with user_errors():
        if out is not None:
            check_file_path(out, "--out", "model.int.safetensors")
        say(str(export_run(run_dir, out)))


def datasets(
    data_dir: Path | None = typer.Option(None, help="Where to look for dataset files."),
) -> None:
    """List the datasets and whether each is available here."""
    from qgen.data import dataset_available, dataset_names

    with user_errors():
        check_data_dir(data_dir)
        table = Table(title="datasets")
        table.add_column("name")
        table.add_column("available")
        table.add_column("where / how to get it")
        for name in dataset_names():
            ok, where = dataset_available(name, data_dir)
            table.add_row(name, "yes" if ok else "no", where)
        console.print(table)


def write_folder_command(
    dataset: str = typer.Argument(..., help="A registered dataset (see `qgen datasets`)."),
    out: Path = typer.Argument(..., help="New folder to write train/<class>/ and "
                                         "val/<class>/ PNG files to."),
    train_subset: int | None = typer.Option(None, help="Seeded training subset size."),
    test_subset: int | None = typer.Option(None, help="Seeded test subset size."),
    subset_seed: int = typer.Option(0, help="Seed of the subsets."),
    data_dir: Path | None = typer.Option(None, help="Where the dataset files are."),
) -> None:
    """Write a dataset as a folder-per-class image dataset, which `folder:OUT` reads."""
    from qgen.data.export import write_folder

    with user_errors():
        check_data_dir(data_dir)
        counts = write_folder(dataset, out, data_dir=data_dir, train_subset=train_subset,
                              test_subset=test_subset, subset_seed=subset_seed)
        say(f"{out}: {counts['train']} train and {counts['test']} val images "
            f"(read it as --dataset folder:{out})")
