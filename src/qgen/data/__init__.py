"""Datasets and the in-memory loader.

``load_data(spec)`` finds a registered dataset on disk (or in a library), reads it, and returns
prepared float tensors with a :class:`DatasetInfo`; :class:`TensorLoader` serves batches from
tensors held on the training device. Registered: ``fashion-mnist``, ``digits``, ``cifar10``,
``cifar100``; new datasets plug in with :func:`register_dataset`.
"""

from qgen.data import cifar, digits, fashion_mnist  # noqa: F401  (fill the registry)
from qgen.data.loader import TensorLoader
from qgen.data.prepare import load_data
from qgen.data.registry import (
    DatasetInfo,
    RawImages,
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
    "RawImages",
    "Splits",
    "TensorLoader",
    "dataset_available",
    "dataset_names",
    "get_dataset",
    "load_data",
    "register_dataset",
]
