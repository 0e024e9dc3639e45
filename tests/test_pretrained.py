"""Every shipped checkpoint re-evaluated against its model card."""

import pytest
import torch

from attn_course.checkpoints import PRETRAINED_DIR, available_pretrained, read_card, sha256_of
from attn_course.registry import all_specs, get_spec, load_pretrained
from attn_course.spec import config_from_dict
from mnist_files import needs_mnist

SHIPPED = available_pretrained()


def test_something_is_shipped():
    assert SHIPPED, f"no pretrained checkpoints in {PRETRAINED_DIR}"


@pytest.mark.parametrize("name", SHIPPED)
def test_card_is_complete_and_file_is_small(name):
    path = PRETRAINED_DIR / f"{name}.pt"
    card = read_card(path)
    for key in ("model", "task", "model_config", "data", "metrics", "steps", "wall_time_s", "hardware", "seed",
                "command", "test_examples", "sha256"):
        assert key in card, f"model card of {name} lacks {key!r}"
    assert card["sha256"] == sha256_of(path), f"{name}.pt changed since its card was written"
    assert card["command"].startswith("python -m attn_course train ")
    assert path.stat().st_size < 8 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_card_meets_its_models_target(name):
    card = read_card(PRETRAINED_DIR / f"{name}.pt")
    spec = get_spec(card["model"])
    assert card["task"] in spec.targets, (
        f"{name} is shipped, but {spec.name!r} declares no Target for task {card['task']!r} "
        "(in its experiments module): say what it must reach, or that it is a comparison")
    problem = spec.targets[card["task"]].check(card["metrics"])
    assert problem is None, f"{name}: {problem}"
    # a field added after a checkpoint was written takes its default, as when the checkpoint loads
    stored = config_from_dict(spec.config_class, card["model_config"])
    assert stored == spec.config(card["task"]), f"{name} was trained with another configuration"


def test_every_target_has_its_shipped_checkpoint():
    targets = {f"{spec.name}-{task}" for spec in all_specs() for task in spec.targets}
    assert targets == set(SHIPPED), (f"targets without a checkpoint: {sorted(targets - set(SHIPPED))}; "
                                     f"checkpoints without a target: {sorted(set(SHIPPED) - targets)}")


@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("name", SHIPPED)
def test_checkpoint_reproduces_its_card(name):
    card = read_card(PRETRAINED_DIR / f"{name}.pt")
    if card["model"] == "gpt":  # its text is this Python's standard library: the card holds for that one only
        from attn_course.experiments.scale import load_corpus
        if load_corpus().sha256 not in card["data"]:
            pytest.skip(f"{name} was measured on another Python's standard library: {card['data']}")
    spec = get_spec(card["model"])
    model = load_pretrained(card["model"], card["task"], device="cpu")
    metrics, count = spec.evaluate(model, card["task"], torch.device("cpu"))
    assert count == card["test_examples"]
    for metric, value in card["metrics"].items():
        assert metrics[metric] == pytest.approx(value, abs=2e-3), f"{name}: {metric}"
