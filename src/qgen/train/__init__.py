"""Training: the protocol's loop and stop rule, evaluation, and run directories."""

from qgen.train.evaluate import EvalMetrics, evaluate, gaps, margins, predict_logits
from qgen.train.loop import TrainOutcome, make_optimizer, train_model
from qgen.train.run import (
    build_for_spec,
    execute_run,
    export_run,
    is_complete,
    load_export,
    load_result,
    load_run_model,
    load_spec,
    versions,
)

__all__ = [
    "EvalMetrics", "TrainOutcome", "build_for_spec", "evaluate", "execute_run", "export_run",
    "gaps", "load_export",
    "is_complete", "load_result", "load_run_model", "load_spec", "make_optimizer", "margins",
    "predict_logits", "train_model", "versions",
]
