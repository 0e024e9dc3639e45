"""Atomic writes, safe loading, pretrained files with model cards, config mismatches."""

import json

import pytest
import torch
from torch import nn

from attn_course import checkpoints as ck


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


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "state.pt"
    ck.atomic_torch_save({"x": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        ck.load_state_file(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.load_state_file(tmp_path / "missing.pt")


def test_pretrained_roundtrip_card_and_mismatch(tmp_path):
    model = nn.Linear(4, 2)
    config = {"kind": "linear", "in": 4, "out": 2}
    weights, card_path = ck.save_pretrained(model, config, {"model": "linear", "metrics": {"a": 1.0}},
                                            tmp_path / "linear-toy.pt")
    card = json.loads(card_path.read_text())
    assert card["model_config"] == config and card["sha256"] == ck.sha256_of(weights)
    assert ck.read_card(weights)["metrics"] == {"a": 1.0}
    stored, state = ck.load_weights(weights, expected_config=config)
    assert stored == config and torch.equal(state["weight"], model.weight)
    with pytest.raises(ValueError, match="config mismatch.*in: file has 4, expected 5"):
        ck.load_weights(weights, expected_config={**config, "in": 5})
    assert ck.available_pretrained(tmp_path) == ["linear-toy"]


def test_pretrained_files_refuse_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_config": {}, "state_dict": {}, "code": nn.Linear(1, 1)}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        ck.load_weights(path)
