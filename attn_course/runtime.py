"""Where and how the course's code runs: profile, device, seeding, banner.

Two profiles decide how big every chapter's experiments are:

``quick``
    The default without a GPU, and what CI runs. Each notebook finishes in about
    two minutes on two CPU cores; its short training still has to show learning.
``full``
    The default with a GPU (Colab): the papers' settings.

``ATTN_COURSE_PROFILE=quick|full`` overrides the default. The device is chosen
in the order cuda > mps > cpu, and ``ATTN_COURSE_DEVICE`` overrides it.
``ATTN_COURSE_REPORT``, set by ``tools/gpu_profile.py``, names a file that receives a
JSON line per training run and the process's peak memory at exit (:func:`report`).
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

PROFILES = ("quick", "full")
PROFILE_ENV = "ATTN_COURSE_PROFILE"
DEVICE_ENV = "ATTN_COURSE_DEVICE"
REPORT_ENV = "ATTN_COURSE_REPORT"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(name: str | None = None) -> torch.device:
    """The device to run on: ``name``, else ``$ATTN_COURSE_DEVICE``, else cuda > mps > cpu.

    A name this course cannot run on (``tpu``, ``cuda:7`` on a machine with one GPU, a
    GPU that is not there) is a ``ValueError`` that lists the valid names.
    """
    source = ""  # where the name came from, when not from the caller
    if not name:
        name, source = os.environ.get(DEVICE_ENV), f" (from {DEVICE_ENV})"
    if name:
        import re

        valid = "cpu, cuda, cuda:N (N = 0, 1, ...), mps"
        wanted = name.strip().lower()
        match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", wanted)
        if match is None or (match[1] != "cuda" and match[2] not in (None, "0")):
            raise ValueError(f"unknown device {name!r}{source}; valid devices: {valid}")
        device = torch.device(wanted)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {name!r} was asked for{source}, but CUDA is not available here; "
                                 f"valid devices: {valid}")
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise ValueError(f"device {name!r} was asked for{source}, but this machine has {count} "
                                 f"CUDA device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        if device.type == "mps" and not _mps_available():
            raise ValueError(f"device {name!r} was asked for{source}, but MPS is not available here; "
                             f"valid devices: {valid}")
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


THREADS_ENV = "ATTN_COURSE_THREADS"


def busy_cores(seconds: float = 0.25) -> float | None:
    """How many cores other programs keep busy now, from two readings of ``/proc/stat``
    ``seconds`` apart (None where there is no ``/proc/stat``, e.g. on macOS or Windows)."""
    def reading() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total_before, idle_before = reading()
        time.sleep(seconds)
        total_after, idle_after = reading()
    except (OSError, ValueError, IndexError):
        return None
    busy_fraction = 1 - (idle_after - idle_before) / max(total_after - total_before, 1)
    return max(0.0, busy_fraction) * (os.cpu_count() or 1)


def set_cpu_threads(threads: int | None = None) -> int:
    """Set how many CPU threads torch uses, and return the number.

    ``threads``, else ``$ATTN_COURSE_THREADS``, else what ``$OMP_NUM_THREADS`` already set,
    else the course's policy: one thread for each core that no other program keeps busy
    right now, at least one (where the load cannot be read: half the cores). On an idle
    two-core machine that is two threads; beside a training run, one. With a thread per core
    on a busy machine, torch's threads wait for each other at every operation and everything
    slows down many times over (a 60-step captioning run beside two busy processes on two
    cores: 312 s with two threads, 13 s with one); ``benchmarks/notebook_threads.py``
    measures the chapters. Threads only matter on the CPU.
    """
    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
            threads = int(value)
        elif os.environ.get("OMP_NUM_THREADS", "").strip():
            return torch.get_num_threads()
        else:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            busy = busy_cores()
            threads = max(1, cores // 2 if busy is None else cores - round(busy))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    torch.set_num_threads(threads)
    return threads


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block, with gradients off; its former mode is restored after.

    Every evaluation and inference function of the course uses it, so that looking at a model in
    the middle of training never leaves dropout or batch normalisation switched to the wrong mode.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def peak_memory() -> dict[str, int | None]:
    """The peak memory of this process so far, in bytes (None where it cannot be read).

    ``gpu_allocated``: ``torch.cuda.max_memory_allocated``, what the tensors took at most;
    ``gpu_reserved``: ``torch.cuda.max_memory_reserved``, what the caching allocator held
    (what a 16 GB GPU must fit); both None when CUDA was not used. ``rss``: the largest
    resident set of the process.
    """
    peaks: dict[str, int | None] = {"gpu_allocated": None, "gpu_reserved": None, "rss": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["gpu_allocated"] = int(torch.cuda.max_memory_allocated())
        peaks["gpu_reserved"] = int(torch.cuda.max_memory_reserved())
    try:
        import resource

        kibibytes_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peaks["rss"] = int(kibibytes_or_bytes) * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):  # no resource module on Windows
        pass
    return peaks


def report(kind: str, **fields) -> None:
    """Append ``{"kind": kind, **fields, "peak_memory": peak_memory()}`` as one JSON line to the
    file ``$ATTN_COURSE_REPORT`` names; nothing when it is unset.

    ``tools/gpu_profile.py`` sets it for each notebook's kernel: :func:`~attn_course.train.fit`
    reports every training run (``kind="fit"``) and the process its peak memory as it exits
    (``kind="exit"``). A file that cannot be written gets a warning, never an error.
    """
    path = os.environ.get(REPORT_ENV, "").strip()
    if not path:
        return
    line = json.dumps({"kind": kind, **fields, "peak_memory": peak_memory()}, default=str)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as error:
        print(f"attn_course: cannot write the report {path} ({REPORT_ENV}): {error}", file=sys.stderr)


if os.environ.get(REPORT_ENV, "").strip():
    atexit.register(report, "exit")
