"""Checkpoints: atomic saving, safe loading, and the pretrained weights with their model cards.

Two kinds of file:

* a *training state* (written by :func:`attn_course.train.fit`): everything needed to
  resume a run exactly; a private file of one run;
* a *pretrained model*: ``<model>-<task>.pt`` holding ``{"model_config", "state_dict"}``
  only, loadable with ``torch.load(..., weights_only=True)``, and beside it
  ``<model>-<task>.json``, its model card: the model config, the data, the metric
  values, steps, wall time, hardware, seed and the exact command that produced it.
  The shipped ones live in this folder, inside the package.

Every write goes to a temporary file in the same folder first and is then renamed
over the target, so an interrupted save never leaves a corrupt file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

PRETRAINED_DIR = Path(__file__).resolve().parent
CARD_FORMAT = "attn_course.model_card/1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return _atomic_write(path, lambda f: f.write(data))


def load_state_file(path: str | Path, *, weights_only: bool = True, map_location: Any = "cpu") -> Any:
    """``torch.load`` with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:  # truncated zip, pickle refused by weights_only, ...
        raise ValueError(f"cannot read checkpoint {path}: {error.__class__.__name__}: {error}") from error


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
# The card keys that describe the file rather than the training run; save_pretrained writes them.
FILE_KEYS = ("format", "model_config", "weights_dtype", "file", "sha256", "size_bytes")


def save_pretrained(
    model: torch.nn.Module, model_config: Mapping[str, Any], card: Mapping[str, Any], path: str | Path,
    weights_dtype: str = "float32",
) -> tuple[Path, Path]:
    """Save weights to ``path`` (``.pt``) and the model card beside it (``.json``).

    The weights are stored on the CPU in ``weights_dtype`` (float32, or float16 for half the
    size; loading casts them back to the model's float32); the card gains the file's SHA-256.
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
    full_card = {"format": CARD_FORMAT, **dict(card), "model_config": dict(model_config),
                 "weights_dtype": weights_dtype}
    full_card["file"] = path.name
    full_card["sha256"] = sha256_of(path)
    full_card["size_bytes"] = path.stat().st_size
    card_path = atomic_write_json(full_card, path.with_suffix(".json"))
    return path, card_path


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card beside a ``.pt`` file (or the ``.json`` itself)."""
    path = Path(path)
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise FileNotFoundError(f"no model card {card_path} beside {path.name}")
    card = json.loads(card_path.read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{card_path} is not a model card ({CARD_FORMAT})")
    return card


def available_pretrained(directory: str | Path = PRETRAINED_DIR) -> list[str]:
    """Names ``<model>-<task>`` of the pretrained models in ``directory``."""
    return sorted(p.stem for p in Path(directory).glob("*.pt") if p.with_suffix(".json").is_file())


def load_weights(path: str | Path, expected_config: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
    """Read ``(model_config, state_dict)`` from a pretrained file with ``weights_only=True``.

    With ``expected_config``, a difference between it and the stored config is a clear
    ``ValueError`` naming the keys that differ.
    """
    payload = load_state_file(path, weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "model_config" not in payload:
        raise ValueError(f"{path} is not a pretrained attn_course model (expected keys model_config, state_dict)")
    stored = dict(payload["model_config"])
    if expected_config is not None:
        expected = dict(expected_config)
        keys = sorted(set(stored) | set(expected))
        differ = {k: (stored.get(k), expected.get(k)) for k in keys if stored.get(k) != expected.get(k)}
        if differ:
            detail = ", ".join(f"{k}: file has {a!r}, expected {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"config mismatch for {Path(path).name}: {detail}")
    return stored, payload["state_dict"]
