"""tools/gpu_profile.py: its arguments, the refusal without CUDA, the report it reads back from a
kernel, and the table it prints (no notebook is run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gpu_profile  # noqa: E402


def test_defaults_are_the_full_profile_on_every_notebook():
    args = gpu_profile.parse_args([])
    assert args.profile == "full" and args.only == [] and not args.allow_cpu
    assert args.out == gpu_profile.DEFAULT_OUT


def test_only_repeats_and_the_cpu_check_of_the_script_parses():
    args = gpu_profile.parse_args(["--profile", "quick", "--allow-cpu", "--only", "00", "--only", "05"])
    assert args.profile == "quick" and args.allow_cpu and args.only == ["00", "05"]


@pytest.mark.parametrize("argv", [["--profile", "paper"], ["--cell-timeout", "0"], ["--notebook-timeout", "-5"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_profile.parse_args(argv)
    assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err


def test_notebooks_are_sorted_and_filtered_by_prefix():
    paths = [Path(name) for name in ("05_transformer.ipynb", "00_what.ipynb", "02_draw.ipynb")]
    assert [p.name for p in gpu_profile.select_notebooks(paths, [])] == [
        "00_what.ipynb", "02_draw.ipynb", "05_transformer.ipynb"]
    assert [p.name for p in gpu_profile.select_notebooks(paths, ["05", "00"])] == ["00_what.ipynb",
                                                                                   "05_transformer.ipynb"]
    with pytest.raises(ValueError, match="no notebook name starts with 07.*02_draw.ipynb"):
        gpu_profile.select_notebooks(paths, ["07"])


def test_without_cuda_it_refuses_unless_the_cpu_is_allowed():
    assert gpu_profile.choose_device(cuda_available=True, allow_cpu=False) == "cuda"
    assert gpu_profile.choose_device(cuda_available=True, allow_cpu=True) == "cuda"
    assert gpu_profile.choose_device(cuda_available=False, allow_cpu=True) == "cpu"
    with pytest.raises(gpu_profile.NoCudaError, match="--allow-cpu"):
        gpu_profile.choose_device(cuda_available=False, allow_cpu=False)


def test_main_exits_2_without_cuda_and_runs_nothing(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_profile, "execute", lambda *a, **k: pytest.fail("a notebook was run"))
    assert gpu_profile.main(["--only", "00"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


FIT = {"kind": "fit", "desc": "RAM on mnist28", "device": "cuda", "steps": 10_000, "total_steps": 10_000,
       "batch_size": 64, "seconds": 100.0, "steps_per_second": 104.2, "train": {"loss": 0.2, "accuracy": 0.97},
       "eval": {"error": 0.0213}, "interrupted": False,
       "peak_memory": {"gpu_allocated": 300 * 2**20, "gpu_reserved": 400 * 2**20, "rss": 2**30}}


def write_lines(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_peak_comes_from_the_exit_record_else_from_the_last_run(tmp_path):
    exit_record = {"kind": "exit", "peak_memory": {"gpu_allocated": 512 * 2**20, "gpu_reserved": None, "rss": 1}}
    report = gpu_profile.read_report(write_lines(tmp_path / "a.jsonl", FIT, exit_record))
    assert report["runs"] == [FIT] and report["peak_memory"]["gpu_allocated"] == 512 * 2**20
    assert report["peak_memory_at"] == "kernel exit"
    killed = gpu_profile.read_report(write_lines(tmp_path / "b.jsonl", FIT))
    assert killed["peak_memory"] == FIT["peak_memory"] and killed["peak_memory_at"] == "the last training run"
    nothing = gpu_profile.read_report(tmp_path / "never_written.jsonl")
    assert nothing == {"runs": [], "peak_memory": {}, "peak_memory_at": None}


def test_key_metrics_prefer_the_held_out_ones_and_cap_the_list():
    assert gpu_profile.key_metrics(FIT) == "held-out: error 0.0213"
    assert gpu_profile.key_metrics({**FIT, "eval": {}}) == "training: loss 0.2, accuracy 0.97"
    many = {**FIT, "eval": {f"m{i}": float(i) for i in range(6)}}
    assert gpu_profile.key_metrics(many) == "held-out: m0 0, m1 1, m2 2, m3 3 (+2 in the JSON)"
    assert gpu_profile.key_metrics({**FIT, "eval": {}, "train": {}}) == "no metrics"


def test_the_table_has_a_row_per_training_run_and_dashes_where_nothing_was_measured():
    results = [
        {"notebook": "00_what_attention_is.ipynb", "outcome": "passed", "seconds": 12.34, "runs": [],
         "peak_memory": {"gpu_allocated": None, "rss": 1400 * 2**20}},
        {"notebook": "03_show_attend_tell.ipynb", "outcome": "failed", "seconds": 300.0,
         "runs": [FIT, {**FIT, "desc": "soft", "steps": 400, "steps_per_second": None}],
         "peak_memory": FIT["peak_memory"]},
    ]
    lines = gpu_profile.format_table(results).splitlines()
    assert lines[0].split()[:6] == ["notebook", "outcome", "wall", "s", "GPU", "MiB"]
    assert len(lines) == 2 + 1 + 2  # header, rule, one row for chapter 0, two runs of chapter 3
    chapter_0, run_1, run_2 = lines[2:]
    assert chapter_0.split() == ["00_what_attention_is.ipynb", "passed", "12.3", "-", "1,400", "-", "-", "-"]
    assert run_1.split()[:5] == ["03_show_attend_tell.ipynb", "failed", "300.0", "300", "1,024"]
    assert "RAM on mnist28, 10,000 steps" in run_1 and "104.2" in run_1 and run_1.endswith("held-out: error 0.0213")
    assert run_2.startswith(" " * 30) and "soft, 400 steps" in run_2 and " - " in run_2
    assert len({line.index("key metrics") if i == 0 else line.index("held-out") for i, line in
                enumerate(lines) if i in (0, 3, 4)}) == 1  # the metrics column lines up


@pytest.mark.slow  # starts a Python that imports torch
def test_a_process_with_the_report_variable_writes_its_peak_memory_when_it_exits(tmp_path):
    path = tmp_path / "kernel.jsonl"
    env = {**os.environ, gpu_profile.REPORT_ENV: str(path), "ATTN_COURSE_THREADS": "1"}
    code = "import torch, attn_course.runtime; x = torch.zeros(2**22)"  # 16 MiB held at exit
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    report = gpu_profile.read_report(path)
    assert report["peak_memory_at"] == "kernel exit" and report["runs"] == []
    assert report["peak_memory"]["rss"] > 16 * 2**20


def test_the_notebook_deadline_stops_a_kernel_it_started_and_says_so():
    kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ipykernel_launcher"])
    try:
        with gpu_profile.Deadline(0.2) as deadline:
            kernel.wait(timeout=30)
        assert deadline.fired and kernel.returncode != 0
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait()


def test_no_deadline_fires_when_the_notebook_ends_in_time():
    with gpu_profile.Deadline(0.2) as deadline:
        pass
    import time

    time.sleep(0.4)
    assert not deadline.fired
