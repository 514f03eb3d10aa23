"""The ``qgen`` command line: a thin layer over the library's functions.

Every user error (:class:`~qgen.errors.QgenError`) ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qgen.cliutil import console, make_progress, user_errors
from qgen.config import RunSpec, Runtime, parse_bits, set_path
from qgen.errors import QgenError
from qgen.io import read_yaml
from qgen.measures.cli import measure_command
from qgen.sweep.cli import collect_command, sweep_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="qgen: how quantization-aware training changes generalization.")
app.add_typer(sweep_app, name="sweep")
app.command("collect")(collect_command)
app.command("measure")(measure_command)


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
        table.add_row(label, r["status"], f"{r['epochs']:.2f}", f"{m['train_loss']:.4f}",
                      f"{m['test_loss']:.4f}", f"{m['loss_gap']:.4f}",
                      f"{100 * m['train_accuracy']:.2f}", f"{100 * m['test_accuracy']:.2f}",
                      f"{100 * m['acc_gap']:.2f}")
    return table


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run spec."),
    dataset: str | None = typer.Option(None, help="Dataset name (see `qgen datasets`)."),
    model: str | None = typer.Option(None, help="nin, resnet, vgg or vit."),
    depth: int | None = typer.Option(None, help="Model depth (NiN blocks, ResNet 20/32/56/18…)."),
    width: int | None = typer.Option(None, help="Model width (NiN: 25·width channels)."),
    dropout: float | None = typer.Option(None),
    optimizer: str | None = typer.Option(None, help="sgd or adam."),
    lr: float | None = typer.Option(None, help="Learning rate (> 0)."),
    momentum: float | None = typer.Option(None),
    weight_decay: float | None = typer.Option(None),
    schedule: str | None = typer.Option(None, help="constant or cosine."),
    batch_size: int | None = typer.Option(None),
    epochs: int | None = typer.Option(None, help="Maximum number of epochs."),
    target_ce: float | None = typer.Option(None, help="Stop when train cross-entropy <= this."),
    seed: int | None = typer.Option(None),
    train_subset: int | None = typer.Option(None, help="Seeded training subset size."),
    augment: bool | None = typer.Option(None, "--augment/--no-augment"),
    input_size: int | None = typer.Option(None, help="Pad/resize images to this size."),
    channels: int | None = typer.Option(None, help="Convert images to 1 or 3 channels."),
    bits: str | None = typer.Option(None, help="Weight and activation bits: 2..8 or fp."),
    w_bits: str | None = typer.Option(None, help="Weight bits: 2..8 or fp."),
    a_bits: str | None = typer.Option(None, help="Activation bits: 2..8 or fp."),
    granularity: str | None = typer.Option(None, help="Weight steps: tensor or channel."),
    first_last: str | None = typer.Option(None, help="First/last layer: 8bit, fp or same."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Run store directory."),
    data_dir: Path | None = typer.Option(None, help="Where the dataset files are."),
    download: bool = typer.Option(False, help="Download the dataset if missing (online only)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1 …"),
    threads: int | None = typer.Option(None, help="torch threads."),
    force: bool = typer.Option(False, help="Retrain even if the run exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train one model (flags override the YAML file) and write runs/<id>/."""
    with user_errors():
        tree: dict[str, Any] = {}
        if config is not None:
            loaded = read_yaml(config)
            if not isinstance(loaded, dict):
                raise QgenError(f"{config}: must hold a mapping with sections "
                                "data, model, quant, train")
            tree = {k: dict(v) if isinstance(v, dict) else v for k, v in loaded.items()}
        flags = {
            "data.name": dataset, "data.train_subset": train_subset, "data.augment": augment,
            "data.input_size": input_size, "data.channels": channels,
            "model.name": model, "model.depth": depth, "model.width": width,
            "model.dropout": dropout, "train.optimizer": optimizer, "train.lr": lr,
            "train.momentum": momentum, "train.weight_decay": weight_decay,
            "train.schedule": schedule, "train.batch_size": batch_size,
            "train.max_epochs": epochs, "train.target_ce": target_ce, "train.seed": seed,
            "quant.granularity": granularity, "quant.first_last": first_last,
        }
        if bits is not None:
            flags["quant.w_bits"] = flags["quant.a_bits"] = parse_bits(bits, "--bits")
        if w_bits is not None:
            flags["quant.w_bits"] = parse_bits(w_bits, "--w-bits")
        if a_bits is not None:
            flags["quant.a_bits"] = parse_bits(a_bits, "--a-bits")
        for key, value in flags.items():
            if value is not None:
                set_path(tree, key, value)
        spec = RunSpec.from_dict(tree)
        runtime = Runtime(out_dir=out, data_dir=data_dir, device=device, threads=threads,
                          quiet=quiet, download=download, force=force)
        result = train_one(spec, runtime)
        if not quiet:
            console.print(results_table([(spec.quant.label, result)],
                                        f"{spec.model.name} on {spec.data.name}, "
                                        f"run {spec.run_id}"))
        console.print(str(Path(out) / spec.run_id))


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A quantized run directory (runs/<id>)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="File to write (default RUN_DIR/model.int.safetensors)."),
) -> None:
    """Export a QAT run as int8 weight codes + step sizes (safetensors)."""
    from qgen.train import export_run

    with user_errors():
        console.print(str(export_run(run_dir, out)), highlight=False)


@app.command()
def datasets(
    data_dir: Path | None = typer.Option(None, help="Where to look for dataset files."),
) -> None:
    """List the datasets and whether each is available here."""
    from qgen.data import dataset_available, dataset_names

    with user_errors():
        table = Table(title="datasets")
        table.add_column("name")
        table.add_column("available")
        table.add_column("where / how to get it")
        for name in dataset_names():
            ok, where = dataset_available(name, data_dir)
            table.add_row(name, "yes" if ok else "no", where)
        console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Run store directory."),
    data_dir: Path | None = typer.Option(None, help="Where Fashion-MNIST is."),
    workers: int = typer.Option(2, min=1, help="Runs trained side by side (each on one "
                                               "thread: the numbers do not depend on it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The main job: a small real study on Fashion-MNIST (fp, 8, 4, 2 bits), as a table."""
    from qgen.demo import run_demo

    with user_errors():
        df = run_demo(out, data_dir=data_dir, workers=workers, quiet=quiet)
        for table in demo_tables(df):
            console.print(table)
        console.print(f"runs and results.parquet/.csv are in {out}/", highlight=False)


def _frame_table(df: Any, title: str, cols: list[tuple[str, str, str]]) -> Table:
    """A compact rich table of DataFrame columns (header, column, format)."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for name, _, _ in cols:
        left = name in ("bits", "status")
        table.add_column(name, justify="left" if left else "right", no_wrap=left,
                         min_width={"bits": 4, "status": 10}.get(name))
    for _, row in df.iterrows():
        cells = []
        for _, col, fmt in cols:
            v = row.get(col)
            try:
                cell = fmt.format(v)
            except (TypeError, ValueError):
                cell = str(v)
            family = col.removeprefix("measure.").removesuffix(".flatness")
            if row.get(f"meta.saturated.{family}") is True:
                cell += " (sat.)"
            if col == "status" and row.get("meta.healthy") is False:
                cell += " UNHEALTHY"
            cells.append(cell)
        table.add_row(*cells)
    return table


def demo_tables(df: Any) -> list[Table]:
    """Per bit width: the gaps; then the flatness measures, when measured."""
    gen = [("bits", "hp.quant.label", "{}"), ("status", "status", "{}"),
           ("train loss", "gen.train_loss", "{:.3f}"), ("test loss", "gen.test_loss", "{:.3f}"),
           ("loss gap", "gen.loss_gap", "{:.3f}"),
           ("train acc", "gen.train_accuracy", "{:.1%}"),
           ("test acc", "gen.test_accuracy", "{:.1%}"), ("acc gap", "gen.acc_gap", "{:.1%}")]
    tables = [_frame_table(df, "generalization gap by bit width (NiN 2x2, Fashion-MNIST "
                               "subset)", gen)]
    flat = [(c.removeprefix("measure.").removesuffix(".flatness"), c, "{:.4g}")
            for c in DEMO_MEASURE_COLUMNS if c in df.columns]
    if flat:
        title = ("flatness: 1/σ² (pacbayes), 1/α'² (sharpness); larger = sharper; "
                 "(sat.) = the search hit a bound")
        tables.append(_frame_table(df, title, [gen[0]] + flat))
    return tables


DEMO_MEASURE_COLUMNS = ("measure.pacbayes.flatness", "measure.pacbayes.mag.flatness",
                        "measure.sharpness.flatness", "measure.sharpness.mag.flatness")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
