"""Datasets and the in-memory loader.

``load_data(spec)`` finds a registered dataset on disk (or in a library), reads it, and returns
prepared float tensors with a :class:`DatasetInfo`; :class:`TensorLoader` serves batches from
tensors held on the training device. Registered: ``fashion-mnist``, ``digits``, ``cifar10``,
``cifar100``, and the image folders ``imagenet`` and ``folder:PATH``
(:mod:`qgen.data.folder`, decoded from disk by worker processes, returned as
:class:`SourceSplits`); new datasets plug in with :func:`register_dataset`.
"""

from qgen.data import cifar, digits, fashion_mnist, folder  # noqa: F401  (fill the registry)
from qgen.data.folder import FolderSource
from qgen.data.loader import TensorLoader
from qgen.data.prepare import load_data
from qgen.data.registry import (
    DatasetInfo,
    RawImages,
    SourceSplits,
    Splits,
    dataset_available,
    dataset_names,
    get_dataset,
    register_dataset,
)
from qgen.data.source import Batches, ExampleSource, TensorSource, as_source, example_shape

__all__ = [
    "Batches",
    "ExampleSource",
    "TensorSource",
    "as_source",
    "example_shape",
    "DatasetInfo",
    "FolderSource",
    "RawImages",
    "SourceSplits",
    "Splits",
    "TensorLoader",
    "dataset_available",
    "dataset_names",
    "get_dataset",
    "load_data",
    "register_dataset",
]
