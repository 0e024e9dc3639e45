"""Where and how the course's code runs: profile, device, seeding, banner.

Two profiles decide how big every chapter's experiments are:

``quick``
    The default without a GPU, and what CI runs. Each notebook finishes in about
    two minutes on two CPU cores; its short training still has to show learning.
``full``
    The default with a GPU (Colab): the papers' settings.

``ATTN_COURSE_PROFILE=quick|full`` overrides the default. The device is chosen
in the order cuda > mps > cpu, and ``ATTN_COURSE_DEVICE`` overrides it.
"""

from __future__ import annotations

import os
import platform
import random
import sys

import numpy as np
import torch

PROFILES = ("quick", "full")
PROFILE_ENV = "ATTN_COURSE_PROFILE"
DEVICE_ENV = "ATTN_COURSE_DEVICE"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(name: str | None = None) -> torch.device:
    """The device to run on: ``name``, else ``$ATTN_COURSE_DEVICE``, else cuda > mps > cpu."""
    name = name or os.environ.get(DEVICE_ENV)
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for, but CUDA is not available here")
        if device.type == "mps" and not _mps_available():
            raise ValueError(f"device {name!r} was asked for, but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_profile(name: str | None = None) -> str:
    """The profile: ``name``, else ``$ATTN_COURSE_PROFILE``, else ``full`` on a GPU and ``quick`` otherwise."""
    name = name or os.environ.get(PROFILE_ENV)
    if name is None or name == "":
        return "full" if get_device().type == "cuda" else "quick"
    name = name.strip().lower()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: expected one of {', '.join(PROFILES)}")
    return name


def pick(quick, full, profile: str | None = None):
    """Return ``quick`` or ``full`` according to the profile: ``steps = pick(300, 20_000)``."""
    return full if get_profile(profile) == "full" else quick


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA and MPS device
    return torch.Generator().manual_seed(seed)


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def device_description(device: torch.device | None = None) -> str:
    """A short human name of the device, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2 threads)``."""
    device = device or get_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def banner(profile: str | None = None, device: torch.device | None = None) -> str:
    """One line that every notebook prints first: profile, device and versions."""
    from . import __version__

    return (
        f"attn_course {__version__} | profile {get_profile(profile)} | device {device_description(device)} | "
        f"torch {torch.__version__} | python {platform.python_version()}"
    )


def print_banner() -> None:
    print(banner())
