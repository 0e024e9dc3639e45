"""Data: MNIST (downloaded and verified) and the generated data sets of the chapters."""

from .binarized import BinarizedMNIST, binarize
from .mnist import (
    MIRRORS,
    MNIST_FILES,
    MNISTChecksumError,
    MNISTNotFoundError,
    data_root,
    ensure_mnist,
    load_mnist,
    verify_mnist,
)
from .ram_variants import RAM_VARIANTS, cluttered_mnist, make_variant, translated_mnist
from .sequences import SequenceTask, render_dates

__all__ = [
    "MIRRORS", "MNIST_FILES", "MNISTChecksumError", "MNISTNotFoundError", "data_root", "ensure_mnist",
    "load_mnist", "verify_mnist", "RAM_VARIANTS", "cluttered_mnist", "make_variant", "translated_mnist",
    "BinarizedMNIST", "binarize", "SequenceTask", "render_dates",
]
