"""Profiles, device choice, seeding and the banner."""

import os
import random

import numpy as np
import pytest
import torch

from attn_course import runtime


def test_profile_default_and_override(monkeypatch):
    monkeypatch.delenv("ATTN_COURSE_PROFILE", raising=False)
    expected = "full" if runtime.get_device().type == "cuda" else "quick"
    assert runtime.get_profile() == expected
    monkeypatch.setenv("ATTN_COURSE_PROFILE", "FULL")
    assert runtime.get_profile() == "full"
    assert runtime.pick(1, 2) == 2
    assert runtime.get_profile("quick") == "quick" and runtime.pick(1, 2, "quick") == 1
    monkeypatch.setenv("ATTN_COURSE_PROFILE", "medium")
    with pytest.raises(ValueError, match="unknown profile 'medium'.*quick, full"):
        runtime.get_profile()


def test_device_choice(monkeypatch):
    monkeypatch.delenv("ATTN_COURSE_DEVICE", raising=False)
    device = runtime.get_device()
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device.type in ("mps", "cpu")
    monkeypatch.setenv("ATTN_COURSE_DEVICE", "cpu")
    assert runtime.get_device() == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.get_device("cuda")


@pytest.mark.parametrize("name", ["tpu", "xla", "meta", "cuda:x", "cuda:-1", "cpu:1", "gpu", "cuda0"])
def test_an_unknown_device_is_a_value_error_listing_the_valid_ones(monkeypatch, name):
    monkeypatch.delenv("ATTN_COURSE_DEVICE", raising=False)
    with pytest.raises(ValueError, match=rf"unknown device '{name}'; valid devices: cpu, cuda, "
                                         r"cuda:N .*, mps"):
        runtime.get_device(name)


def test_device_names_are_read_leniently_and_errors_say_where_they_came_from(monkeypatch):
    monkeypatch.setenv("ATTN_COURSE_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"unknown device 'tpu' \(from ATTN_COURSE_DEVICE\)"):
        runtime.get_device()
    assert runtime.get_device(" CPU ") == torch.device("cpu")  # the argument wins over the variable
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    beyond = f"cuda:{count}"  # one past the last GPU, or any GPU where there is none
    with pytest.raises(ValueError, match=f"{beyond}.*(this machine has {count} CUDA device|CUDA is not available)"):
        runtime.get_device(beyond)


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    generator = runtime.seed_everything(7)
    first = draw() + (torch.rand(1, generator=generator).item(),)
    generator = runtime.seed_everything(7)
    assert draw() + (torch.rand(1, generator=generator).item(),) == first
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(-1)


def test_banner_names_profile_device_and_versions(monkeypatch):
    monkeypatch.setenv("ATTN_COURSE_PROFILE", "quick")
    line = runtime.banner()
    assert "\n" not in line
    for part in ("profile quick", f"torch {torch.__version__}", "python 3.", "device "):
        assert part in line


def test_set_cpu_threads_follows_the_setting_then_the_idle_cores(monkeypatch):
    import torch

    from attn_course import runtime

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("ATTN_COURSE_THREADS", "3")
        assert runtime.set_cpu_threads() == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("ATTN_COURSE_THREADS", "zero")
        with pytest.raises(ValueError, match="ATTN_COURSE_THREADS must be a positive integer"):
            runtime.set_cpu_threads()
        monkeypatch.delenv("ATTN_COURSE_THREADS")
        monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        monkeypatch.setattr(runtime, "busy_cores", lambda: 1.2)  # one program busy beside us
        assert runtime.set_cpu_threads() == 3
        monkeypatch.setattr(runtime, "busy_cores", lambda: 3.9)  # everything busy: still one thread
        assert runtime.set_cpu_threads() == 1
        monkeypatch.setattr(runtime, "busy_cores", lambda: None)  # load unknown: half the cores
        assert runtime.set_cpu_threads() == 2
        with pytest.raises(ValueError, match="threads must be a positive int"):
            runtime.set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_busy_cores_is_a_number_of_cores_or_none():
    from attn_course.runtime import busy_cores

    busy = busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= os.cpu_count()
