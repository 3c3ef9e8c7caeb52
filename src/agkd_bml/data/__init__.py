"""Datasets as in-memory uint8 tensors, tensor augmentation, batching and the per-class index.

``load_dataset("digits")`` needs nothing on disk; ``npz:PATH`` reads any ``.npz`` with ``x_train, y_train,
x_test, y_test``; ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion-mnist`` go through torchvision
and ``tiny-imagenet`` reads its standard folder layout.
"""

from agkd_bml.data.augment import Augment
from agkd_bml.data.batches import ClassIndex, ImageSampler, iterate_batches, to_float
from agkd_bml.data.datasets import DATASETS, Dataset, DataSpec, load_dataset

__all__ = [
    "DATASETS",
    "Augment",
    "ClassIndex",
    "DataSpec",
    "Dataset",
    "ImageSampler",
    "iterate_batches",
    "load_dataset",
    "to_float",
]
