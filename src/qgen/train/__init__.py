"""Training: the protocol's loop and stop rule, evaluation, training health, and one run from
spec to run directory (the directory itself belongs to :mod:`qgen.store`)."""

from qgen.train.evaluate import EvalMetrics, evaluate, gaps, margins, predict_logits
from qgen.train.health import training_health
from qgen.train.loop import TrainOutcome, make_optimizer, recalibrate_batchnorm, train_model
from qgen.train.run import (
    build_for_spec,
    check_names,
    execute_run,
    export_run,
    info_from_result,
    load_export,
    load_run_data,
    load_run_model,
    spec_with_weights,
    versions,
)

__all__ = [
    "EvalMetrics", "TrainOutcome", "build_for_spec", "check_names", "evaluate", "execute_run",
    "export_run", "gaps", "info_from_result", "load_export", "load_run_data", "load_run_model",
    "make_optimizer", "margins", "predict_logits", "recalibrate_batchnorm", "spec_with_weights",
    "train_model", "training_health", "versions",
]
