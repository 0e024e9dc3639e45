"""Atomic writes, safe loading, writable and locked outputs, pretrained files with model cards."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from attn_course import checkpoints as ck
from lock_holder import hold_lock

posix_only = pytest.mark.skipif(ck.fcntl is None, reason="flock locks are POSIX only")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    ck.atomic_torch_save({"x": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while writing")

    with pytest.raises(RuntimeError, match="boom"):
        ck.atomic_torch_save({"x": torch.zeros(3), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # no temporary file left


@pytest.mark.parametrize("failure", ["enospc", "short write"])
def test_a_full_disk_is_a_checkpoint_error_that_keeps_the_last_good_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "state.pt"
    ck.atomic_torch_save({"x": torch.ones(3)}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        if failure == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ck.CheckpointError) as error:
        ck.atomic_torch_save({"x": torch.zeros(3)}, path)
    text = str(error.value)
    assert str(path) in text and "the last good file at that path is kept" in text
    assert ("no space left on device" if failure == "enospc" else "is the disk full?") in text
    assert isinstance(error.value, OSError)
    monkeypatch.undo()
    assert torch.equal(ck.load_state_file(path)["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_torchs_own_short_write_error_is_recognised(tmp_path):
    """torch reports an OSError of the file object as ``unexpected pos``; the cause is found behind it."""

    class FullFile:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 500:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    with pytest.raises(ck.CheckpointError, match="no space left on device"):
        ck._atomic_write(tmp_path / "big.pt", lambda f: torch.save({"x": torch.ones(10_000)}, FullFile(f)))
    assert list(tmp_path.iterdir()) == []


def test_check_writable_names_the_folder_and_the_cause(tmp_path, monkeypatch):
    assert ck.check_writable(tmp_path / "new" / "deeper" / "out.pt") == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == []  # the test file is gone
    (tmp_path / "blocked").write_text("a file in the way")
    with pytest.raises(ck.CheckpointError, match="blocked.*a file is in the way"):
        ck.check_writable(tmp_path / "blocked" / "out.pt")
    with pytest.raises(ck.CheckpointError, match="it is a folder"):
        ck.check_writable(tmp_path / "new")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ck.tempfile, "mkstemp", denied)
    with pytest.raises(ck.CheckpointError) as error:
        ck.check_writable(tmp_path / "out.pt")
    assert f"cannot write {tmp_path / 'out.pt'}: files cannot be created in the folder {tmp_path}" in str(error.value)
    assert "(permission denied)" in str(error.value)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "state.pt"
    ck.atomic_torch_save({"x": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        ck.load_state_file(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.load_state_file(tmp_path / "missing.pt")


def test_files_that_would_run_code_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    path = tmp_path / "planted.state"
    torch.save({"step": 3, "payload": Payload()}, path)
    with pytest.raises(ValueError) as error:
        ck.load_state_file(path)
    text = str(error.value)
    assert f"cannot read checkpoint {path}" in text and "(exec)" in text
    assert "not a file written by attn_course" in text and "untrusted source" in text
    assert "weights_only" not in text and error.value.__cause__ is None and error.value.__suppress_context__
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=True"):
        ck.load_state_file(path, weights_only=False)
    assert not marker.exists()


def test_pretrained_files_refuse_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_config": {}, "state_dict": {}, "code": nn.Linear(1, 1)}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint .*torch.nn.modules.linear.Linear"):
        ck.load_weights(path)


# --------------------------------------------------------------------------- one writer per output


def try_lock_in_subprocess(path):
    """Whether another process can take the lock of ``path`` right now."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
            "except BlockingIOError:\n    print('held')")
    return subprocess.run([sys.executable, "-c", code, f"{path}.lock"], capture_output=True, text=True,
                          check=True).stdout.strip()


@posix_only
def test_output_lock_refuses_a_second_writer_and_names_its_pid(tmp_path):
    out = tmp_path / "runs" / "ram-mnist28.pt"
    out.parent.mkdir()
    holder = hold_lock(out)
    try:
        with pytest.raises(ck.OutputLockedError) as error:
            with ck.output_lock(out):
                pytest.fail("the lock is held by another process")
        assert isinstance(error.value, ValueError)
        assert f"{out} is locked: another process (pid {holder.pid}) is writing it" in str(error.value)
    finally:
        holder.kill()  # a killed process leaves its lock file, but the OS has released the lock
        holder.wait()
    with ck.output_lock(out) as lock_path:
        assert lock_path == tmp_path / "runs" / "ram-mnist28.pt.lock"
        assert lock_path.read_text().strip() == str(os.getpid())
        assert try_lock_in_subprocess(out) == "held"
        with ck.output_lock(out):  # the same process may nest it
            pass
        assert try_lock_in_subprocess(out) == "held"
    assert not lock_path.exists()
    assert try_lock_in_subprocess(out) == "free"


# --------------------------------------------------------------------------- pretrained files and cards


def save_toy(tmp_path, card=None):
    model = nn.Linear(4, 2)
    config = {"kind": "linear", "in": 4, "out": 2}
    card = card or {"model": "linear", "task": "toy", "metrics": {"a": 1.0}}
    weights, card_path = ck.save_pretrained(model, config, card, tmp_path / "linear-toy.pt")
    return model, config, weights, card_path


def test_pretrained_roundtrip_card_and_mismatch(tmp_path):
    model, config, weights, card_path = save_toy(tmp_path)
    card = json.loads(card_path.read_text())
    assert card["model_config"] == config and card["sha256"] == ck.sha256_of(weights)
    assert ck.read_card(weights)["metrics"] == {"a": 1.0}
    assert ck.read_card(weights, verify=True) == ck.verify_pair(weights) == card
    stored, state = ck.load_weights(weights, expected_config=config)
    assert stored == config and torch.equal(state["weight"], model.weight)
    with pytest.raises(ValueError, match="config mismatch.*in: file has 4, expected 5"):
        ck.load_weights(weights, expected_config={**config, "in": 5})
    assert ck.available_pretrained(tmp_path) == ["linear-toy"]


def test_weights_and_card_that_do_not_belong_together_are_found(tmp_path):
    _, config, weights, card_path = save_toy(tmp_path)
    old_card = card_path.read_text()
    ck.save_pretrained(nn.Linear(4, 2), config, {"model": "linear", "task": "toy", "metrics": {}}, weights)
    card_path.write_text(old_card)  # new weights beside the old card: a save cut off between the two
    with pytest.raises(ValueError) as error:
        ck.verify_pair(weights)
    assert f"{weights} and {card_path} do not belong together" in str(error.value)
    assert "another sha256" in str(error.value)
    with pytest.raises(ValueError, match="do not belong together"):
        ck.read_card(weights, verify=True)
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"the weights file has {weights.stat().st_size} bytes"):
        ck.verify_pair(weights)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "invalid JSON at line 1, column 2"),
    ("[1, 2]", "it holds a JSON list, not an object"),
    ('{"format": "something/else", "model": "m", "task": "t", "metrics": {}}', "its format is 'something/else'"),
    ('{"format": "attn_course.model_card/1", "model": "m", "metrics": {}}', "it lacks a valid task (text)"),
    ('{"format": "attn_course.model_card/1", "model": "m", "task": "t", "metrics": [0.1]}', "it lacks a valid metrics (an object)"),
    (b"\xff\xfe{}", "not UTF-8 text"),
])
def test_a_bad_card_is_a_clear_error_naming_the_file(tmp_path, text, problem):
    card_path = tmp_path / "m-t.json"
    if isinstance(text, bytes):
        card_path.write_bytes(text)
    else:
        card_path.write_text(text)
    with pytest.raises(ValueError) as error:
        ck.read_card(tmp_path / "m-t.pt")
    assert str(card_path) in str(error.value) and problem in str(error.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_weights_with_nan_or_inf_are_refused(tmp_path, bad):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].bias[1] = bad
        model[1].weight[0, 0] = bad
    weights, _ = ck.save_pretrained(model, {"kind": "toy"}, {"model": "toy", "task": "t", "metrics": {}},
                                    tmp_path / "toy-t.pt")
    with pytest.raises(ValueError) as error:
        ck.load_weights(weights)
    assert str(weights) in str(error.value) and "tensor '1.weight'" in str(error.value)  # the first one
    assert ("NaN" if bad != bad else "infinite") in str(error.value)


def test_a_shipped_model_loads_and_matches_its_card():
    path = ck.PRETRAINED_DIR / "conv-mnist28.pt"
    card = ck.read_card(path, verify=True)
    config, state = ck.load_weights(path, expected_config=card["model_config"])
    assert card["model"] == "conv" and card["task"] == "mnist28" and state


# --------------------------------------------------------------------------- compact model cards


def test_card_json_has_one_line_per_flat_list_and_reads_back_the_same():
    card = {"model": "m", "metrics": {"a": 0.5}, "empty": {}, "none": [], "config": {"sizes": [3, 4], "name": "x"},
            "history": {"loss": {"step": [1, 2, 3], "value": [0.5, 0.25, 0.125]}},
            "nested": [[1, 2], {"k": "v"}], "text": "é \"quoted\"", 3: None}
    text = ck.json_text(card)
    assert json.loads(text) == json.loads(json.dumps(card))
    lines = text.splitlines()
    assert '      "step": [1, 2, 3],' in lines and '      "value": [0.5, 0.25, 0.125]' in lines
    assert '    "sizes": [3, 4],' in lines and '  "metrics": {' in lines and '    "a": 0.5' in lines


def toy_history(points):
    return {"loss": {"step": list(range(10, 10 * points + 1, 10)), "value": [1 / 3 + i for i in range(points)]},
            "eval_accuracy": {"step": [10 * points], "value": [0.123456789]}}


def test_save_pretrained_writes_the_history_downsampled_and_rounded(tmp_path):
    card = {"model": "linear", "task": "toy", "metrics": {"a": 1 / 3}, "history": toy_history(1000), "seed": 0}
    _, _, weights, card_path = save_toy(tmp_path, card)
    written = ck.read_card(weights, verify=True)
    assert ({k: v for k, v in written.items() if k not in ck.FILE_KEYS and k != "history"}
            == {k: v for k, v in card.items() if k != "history"})
    assert written["metrics"] == {"a": 1 / 3}  # only the history is rounded
    loss = written["history"]["loss"]
    assert len(loss["step"]) <= ck.CARD_HISTORY_POINTS and loss["step"][0] == 10 and loss["step"][-1] == 10_000
    assert loss["value"][0] == 0.33333 and all(float(f"{v:.5g}") == v for v in loss["value"])
    assert written["history"]["eval_accuracy"] == {"step": [10_000], "value": [0.12346]}
    assert len(card["history"]["loss"]["step"]) == 1000  # the caller's card is not changed
    text = card_path.read_text()
    assert text == ck.json_text(written) + "\n" and len(text.splitlines()) < 40
    assert ck.compact_card(written) == written  # compacted already: unchanged


def test_compact_card_keeps_a_short_or_foreign_history_as_it_is():
    short = {"model": "m", "history": {"loss": {"step": [1, 2], "value": [0.5, 0.25]}}}
    assert ck.compact_card(short) == short
    for odd in ({"loss": [1, 2, 3]}, [1, 2], {"loss": {"step": [1, 2], "value": [0.5]}}, "none"):
        assert ck.compact_card({"model": "m", "history": odd}) == {"model": "m", "history": odd}
    assert ck.compact_card({"model": "m"}) == {"model": "m"}


def test_shipped_cards_are_compact():
    """Each card keeps a plot's worth of its training curves, not the whole log (which took 1.4 MB)."""
    from attn_course.history import History

    for path in sorted(ck.PRETRAINED_DIR.glob("*.json")):
        card = ck.read_card(path)
        assert ck.compact_card(card) == card, f"{path.name}: history not compacted"
        assert path.read_text(encoding="utf-8") == ck.json_text(card) + "\n", f"{path.name}: not written by json_text"
        assert path.stat().st_size < 16_000, f"{path.name} is {path.stat().st_size} bytes"
        history = History.from_state_dict(card["history"])
        assert history.names() and all(history.series(name)[0][-1] <= card["steps"] for name in history.names())
