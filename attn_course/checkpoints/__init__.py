"""Checkpoints: atomic saving, safe loading, and the pretrained weights with their model cards.

Two kinds of file:

* a *training state* (written by :func:`attn_course.train.fit`): everything needed to
  resume a run exactly; a private file of one run;
* a *pretrained model*: ``<model>-<task>.pt`` holding ``{"model_config", "state_dict"}``
  only, and beside it ``<model>-<task>.json``, its model card: the model config, the
  data, the metric values, steps, wall time, hardware, seed and the exact command that
  produced it, with the SHA-256 and size of the weights file, and the training curves
  (``history``) downsampled to about a hundred points per metric (:func:`compact_card`).
  The shipped ones live in this folder, inside the package.

Every file is read with ``torch.load(..., weights_only=True)``, so a file planted in
place of one of ours cannot run code. Every write goes to a temporary file in the same
folder first and is then renamed over the target, so a failed or interrupted save never
leaves a corrupt file behind: the previous file stays. :func:`check_writable` tells
before a long run whether its output can be written at all, and :func:`output_lock`
keeps two runs from writing the same output.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..history import History

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PRETRAINED_DIR = Path(__file__).resolve().parent
CARD_FORMAT = "attn_course.model_card/1"
_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(OSError):
    """An output file cannot be written (no permission, no space left, ...); the message says which and why."""


class OutputLockedError(ValueError):
    """Another process is writing the same output."""


def _os_reason(error: BaseException) -> str:
    """``'no space left on device'`` and the like, from an OSError (or one it was raised from)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return os.strerror(error.errno).lower()
        if isinstance(error, OSError):
            return str(error) or error.__class__.__name__
        error = error.__cause__ or error.__context__
    return ""


def _is_write_failure(error: BaseException) -> bool:
    """An OSError, or torch's RuntimeError for a write cut short (``unexpected pos``, ``file write failed``)."""
    if isinstance(error, OSError):
        return True
    if isinstance(error, RuntimeError):
        text = str(error)
        return bool(_os_reason(error)) or any(
            marker in text for marker in ("unexpected pos", "PytorchStreamWriter", "file write failed"))
    return False


def _atomic_write(path: str | Path, write) -> Path:
    path = Path(path)
    existed = path.is_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CheckpointError(_write_failure_text(path, error, existed)) from error
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException as error:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if _is_write_failure(error):
            raise CheckpointError(_write_failure_text(path, error, existed)) from error
        raise
    return path


def _write_failure_text(path: Path, error: BaseException, existed: bool) -> str:
    reason = _os_reason(error) or f"the write was cut short ({str(error).strip()[:200]}); is the disk full?"
    kept = "the last good file at that path is kept" if existed else "nothing was written there"
    return f"could not save {path}: {reason}; {kept}"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A failed write (disk full, no permission) raises :class:`CheckpointError` and keeps
    the previous file at ``path``.
    """
    return _atomic_write(path, lambda f: torch.save(obj, f))


def json_text(obj: Any, indent: int = 2) -> str:
    """``obj`` as indented JSON, but a list of numbers, text, booleans or nulls on one line.

    ``json.loads`` reads it back to what ``json.dumps(obj, indent=indent)`` would have
    written; a training curve of a hundred points takes one line per list instead of one
    per number.
    """
    def text(value: Any, depth: int) -> str:
        if isinstance(value, Mapping) and value:
            inner = " " * (indent * (depth + 1))
            items = [f"{inner}{json.dumps(key if isinstance(key, str) else json.dumps(key))}: {text(item, depth + 1)}"
                     for key, item in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "}"
        if isinstance(value, (list, tuple)) and any(isinstance(item, (Mapping, list, tuple)) for item in value):
            inner = " " * (indent * (depth + 1))
            items = [inner + text(item, depth + 1) for item in value]
            return "[\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "]"
        return json.dumps(value)  # a scalar, an empty container, or a flat list on one line

    return text(obj, 0)


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON with flat lists on one line (:func:`json_text`), atomically."""
    data = (json_text(obj) + "\n").encode()
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place when complete."""
    return _atomic_write(path, lambda f: f.write(data))


def check_writable(path: str | Path) -> Path:
    """Check that the file ``path`` can be written: create its folder and a test file there, then remove it.

    Returns the folder. Raises :class:`CheckpointError` naming the path and the cause
    (permission denied, read-only file system, a file in the way, ...).
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a folder; name a file instead")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=folder)
        os.close(handle)
        os.unlink(tmp_name)
    except OSError as error:
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way of the folder"
        else:
            reason = _os_reason(error)
        raise CheckpointError(
            f"cannot write {path}: files cannot be created in the folder {folder} ({reason}); "
            "choose another output path or make the folder writable") from error
    return folder


_HELD_LOCKS: dict[str, int] = {}


def _read_pid(lock_path: Path) -> int | None:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _locked_error(path: Path, lock_path: Path) -> OutputLockedError:
    pid = _read_pid(lock_path)
    if pid == os.getpid():
        holder = f"this process (pid {pid}) is already writing it"
    elif pid is not None:
        holder = f"another process (pid {pid}) is writing it"
    else:
        holder = "another process is writing it"
    hint = ("wait for that run to finish, stop it, or choose another output path"
            if fcntl is not None else
            f"wait for that run to finish or choose another output path; if no such run is left, delete {lock_path}")
    return OutputLockedError(f"{path} is locked: {holder}; {hint}")


@contextmanager
def output_lock(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` for the duration of the ``with`` block.

    The lock is the file ``<path>.lock`` (holding the pid), taken without waiting: if
    another process holds it, :class:`OutputLockedError` (a ``ValueError``) names the
    output and that process. The lock file is removed on exit; on POSIX the operating
    system also releases the lock if the process dies. Nested use for the same path in
    one process is allowed. Yields the lock file's path.
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    key = os.path.realpath(lock_path)
    if _HELD_LOCKS.get(key):
        _HELD_LOCKS[key] += 1
        try:
            yield lock_path
        finally:
            _HELD_LOCKS[key] -= 1
        return
    check_writable(lock_path)
    fd = _acquire(path, lock_path)
    _HELD_LOCKS[key] = 1
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        del _HELD_LOCKS[key]
        if fcntl is None:  # Windows cannot remove an open file
            os.close(fd)
        try:
            os.unlink(lock_path)  # with flock: while still holding it, see _acquire
        except OSError:
            pass
        if fcntl is not None:
            os.close(fd)


def _acquire(path: Path, lock_path: Path) -> int:
    """Open and lock ``lock_path``; returns the descriptor."""
    if fcntl is None:
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise _locked_error(path, lock_path) from None
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise CheckpointError(f"cannot take the lock {lock_path} for {path}: {_os_reason(error)}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _locked_error(path, lock_path) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us removes the file before it unlocks: if what we locked is no
        # longer the file at lock_path, a newer process may hold that one, so start again.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def load_state_file(path: str | Path, *, weights_only: bool = True, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors.

    A missing file is a ``FileNotFoundError``; a truncated or foreign file, or one that
    holds Python objects other than plain data (which could run code when loaded), is a
    ``ValueError`` naming the file. ``weights_only=False`` is refused: every file is
    loaded as data only.
    """
    if weights_only is not True:
        raise ValueError("load_state_file loads data only (weights_only=True); files that need more are refused")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, pickled code refused, ...
        text = str(error)
        if "Weights only load failed" in text or "weights_only" in text:
            found = _UNSAFE_GLOBAL.search(text)
            what = f"a Python object ({found.group(1)})" if found else "Python objects"
            raise ValueError(
                f"cannot read checkpoint {path}: it holds {what} beyond tensors and plain data, which loading would "
                "have to run. It is not a file written by attn_course, or it was written by an untrusted source "
                "or an older version; nothing in it was run. Delete it (or write to another path) to start afresh."
            ) from None  # torch's own text suggests loading it unsafely: not advice to relay
        raise ValueError(f"cannot read checkpoint {path}: {error.__class__.__name__}: {text}") from error


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- pretrained models


def pretrained_name(model: str, task: str) -> str:
    return f"{model}-{task}"


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# A card keeps its training curves downsampled (History.downsampled) and rounded: a plot's worth, not the log.
CARD_HISTORY_POINTS = 100
CARD_HISTORY_DIGITS = 5
# The card keys that describe the file rather than the training run; save_pretrained writes them.
FILE_KEYS = ("format", "model_config", "weights_dtype", "file", "sha256", "size_bytes")


def save_pretrained(
    model: torch.nn.Module, model_config: Mapping[str, Any], card: Mapping[str, Any], path: str | Path,
    weights_dtype: str = "float32",
) -> tuple[Path, Path]:
    """Save weights to ``path`` (``.pt``) and the model card beside it (``.json``).

    The weights are stored on the CPU in ``weights_dtype`` (float32, or float16 for half the
    size; loading casts them back to the model's float32); the card gains the file's SHA-256,
    and its ``history``, if any, is downsampled and rounded (:func:`compact_card`).
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"a pretrained model file must end in .pt, got {path}")
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    dtype = WEIGHT_DTYPES[weights_dtype]
    state = {k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype).clone()
             for k, v in model.state_dict().items()}
    atomic_torch_save({"model_config": dict(model_config), "state_dict": state}, path)
    full_card = {"format": CARD_FORMAT, **compact_card(card), "model_config": dict(model_config),
                 "weights_dtype": weights_dtype}
    full_card["file"] = path.name
    full_card["sha256"] = sha256_of(path)
    full_card["size_bytes"] = path.stat().st_size
    card_path = atomic_write_json(full_card, path.with_suffix(".json"))
    return path, card_path


def _is_history_state(obj: Any) -> bool:
    """Whether ``obj`` is a ``History.state_dict()``: per metric, lists ``step`` and ``value`` of equal length."""
    return isinstance(obj, Mapping) and all(
        isinstance(series, Mapping) and isinstance(series.get("step"), list) and isinstance(series.get("value"), list)
        and len(series["step"]) == len(series["value"])
        and all(isinstance(step, int) and not isinstance(step, bool) for step in series["step"])
        and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in series["value"])
        for series in obj.values())


def _significant(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else float(value)


def compact_card(card: Mapping[str, Any], max_points: int = CARD_HISTORY_POINTS,
                 digits: int = CARD_HISTORY_DIGITS) -> dict[str, Any]:
    """The card with its ``history`` downsampled to ``max_points`` per metric and rounded to ``digits``
    significant digits; every other key as it is (a copy, in the same order).

    The history stays a ``History.state_dict()`` (``History.from_state_dict(card["history"])``
    and :func:`attn_course.viz.plot_history` read it); see :meth:`History.downsampled` for
    how the curves are coarsened. A card compacted already comes back unchanged, and so does
    a ``history`` of another shape. :func:`save_pretrained` writes every card through this.
    """
    out = dict(card)
    if "history" in out and _is_history_state(out["history"]):
        state = History.from_state_dict(out["history"]).downsampled(max_points).state_dict()
        out["history"] = {name: {"step": series["step"], "value": [_significant(v, digits) for v in series["value"]]}
                          for name, series in state.items()}
    return out


_CARD_REQUIRED = {"model": (str, "text"), "task": (str, "text"), "metrics": (dict, "an object")}


def read_card(path: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """The model card beside a ``.pt`` file (or the ``.json`` itself).

    A card that is not valid JSON, not an object, of another format, or without
    ``model``, ``task`` and a ``metrics`` object is a ``ValueError`` naming the file.
    With ``verify``, the weights beside it must match the card (:func:`verify_pair`).
    """
    path = Path(path)
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise FileNotFoundError(f"no model card {card_path} beside {path.name}")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{card_path} is not a model card: it is not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{card_path} is not a model card: invalid JSON at line {error.lineno}, "
                         f"column {error.colno}: {error.msg}") from None
    if not isinstance(card, dict):
        kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(card), "null")
        raise ValueError(f"{card_path} is not a model card: it holds a JSON {kind}, not an object")
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{card_path} is not a model card: its format is {card.get('format')!r}, "
                         f"expected {CARD_FORMAT!r}")
    wrong = [f"{key} ({what})" for key, (kind, what) in _CARD_REQUIRED.items() if not isinstance(card.get(key), kind)]
    if wrong:
        raise ValueError(f"{card_path} is not a complete model card: it lacks a valid {', '.join(wrong)}")
    if verify:
        verify_pair(card_path.with_suffix(".pt"), card)
    return card


def verify_pair(weights_path: str | Path, card: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check that a weights file and its card belong together: the card's size and SHA-256 are the file's.

    ``save_pretrained`` writes the weights first and the card second, so a save cut off
    in between leaves new weights beside an old card; this finds it. Returns the card;
    a mismatch is a ``ValueError`` naming both files.
    """
    weights_path = Path(weights_path)
    card_path = weights_path.with_suffix(".json")
    if card is None:
        card = read_card(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"no weights file {weights_path} beside its card {card_path.name}")
    if "sha256" not in card or "size_bytes" not in card:
        raise ValueError(f"{card_path} records no sha256 and size_bytes: {weights_path} cannot be checked against it")
    size = weights_path.stat().st_size
    if size != card["size_bytes"] or sha256_of(weights_path) != card["sha256"]:
        found = f"{size} bytes" if size != card["size_bytes"] else "another sha256"
        raise ValueError(
            f"{weights_path} and {card_path} do not belong together: the card describes a file of "
            f"{card['size_bytes']} bytes with sha256 {str(card['sha256'])[:12]}..., the weights file has {found}; "
            "one of them was replaced, or a save was cut off between them: save or copy the pair again")
    return dict(card)


def available_pretrained(directory: str | Path = PRETRAINED_DIR) -> list[str]:
    """Names ``<model>-<task>`` of the pretrained models in ``directory``."""
    return sorted(p.stem for p in Path(directory).glob("*.pt") if p.with_suffix(".json").is_file())


def load_weights(path: str | Path, expected_config: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
    """Read ``(model_config, state_dict)`` from a pretrained file with ``weights_only=True``.

    With ``expected_config``, a difference between it and the stored config is a clear
    ``ValueError`` naming the keys that differ. Weights holding NaN or infinity are
    refused with a ``ValueError`` naming the first such tensor.
    """
    payload = load_state_file(path, weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "model_config" not in payload:
        raise ValueError(f"{path} is not a pretrained attn_course model (expected keys model_config, state_dict)")
    if not isinstance(payload["model_config"], Mapping) or not isinstance(payload["state_dict"], Mapping):
        raise ValueError(f"{path} is not a pretrained attn_course model (model_config and state_dict must be dicts)")
    for name, tensor in payload["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path} is not a pretrained attn_course model: {name!r} is not a tensor")
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite values"
            raise ValueError(f"{path} holds broken weights: tensor {name!r} contains {kind}; "
                             "the run that wrote it diverged, or the file was damaged")
    stored = dict(payload["model_config"])
    if expected_config is not None:
        expected = dict(expected_config)
        keys = sorted(set(stored) | set(expected))
        differ = {k: (stored.get(k), expected.get(k)) for k in keys if stored.get(k) != expected.get(k)}
        if differ:
            detail = ", ".join(f"{k}: file has {a!r}, expected {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"config mismatch for {Path(path).name}: {detail}")
    return stored, payload["state_dict"]
