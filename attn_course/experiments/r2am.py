"""Chapter 4's experiments: attention OCR with recursive, recurrent and plain CNNs on rendered text lines
(Lee & Osindero 2016, section 4; Liang & Hu 2015).

The paper's model is :mod:`attn_course.r2am`; here are the data, the reading metrics (word
accuracy, character error rate, and how well the attention lines up with the characters),
the recipe and the targets of the shipped readers.
"""

from __future__ import annotations

import torch

from ..data.text_lines import WIDTH, TextLines
from ..r2am import BLOCKS, R2AM, R2AMConfig, r2am_loss, read
from ..spec import ModelSpec, Recipe, Target

TASKS = BLOCKS + tuple(f"{b}-noattn" for b in BLOCKS)
# Batch 64, Adam from 2e-3 on a cosine to 1/20 of it, gradients clipped at norm 5; every batch is freshly
# rendered, so a reader never sees a line twice.
RECIPE = Recipe(400, 20_000, batch_size=64, lr=2e-3, clip_grad_norm=5.0)
TARGETS = {
    "recurrent": Target("word_accuracy_words", at_least=0.95, why="held-out words read exactly, greedy"),
    "recursive": Target("word_accuracy_words", why="the recursive block the recurrent one is compared with"),
}


def config_for(task: str) -> R2AMConfig:
    """The course's reader for ``task``: a block kind, with ``-noattn`` for the reader without attention."""
    if task not in TASKS:
        raise ValueError(f"unknown R2AM variant {task!r}; choose one of: {', '.join(TASKS)}")
    block, _, suffix = task.partition("-")
    return R2AMConfig(block=block, attention="none" if suffix else "soft")


# --------------------------------------------------------------------------- metrics


def column_centres(columns: int = WIDTH // 4) -> torch.Tensor:
    """x (in input pixels) of each column's centre: column i covers pixels 4i..4i+3."""
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    return torch.arange(columns, dtype=torch.float32) * (WIDTH / columns) + (WIDTH / columns - 1) / 2


def alignment(alpha: torch.Tensor, centres: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where each step looked: x^_t = sum_i alpha_ti x_i, and whether it is nearer the true centre of
    character t than to any other character's (``hit``), for the steps with a character (B, T)."""
    if alpha.dim() != 3 or centres.dim() != 2 or centres.shape[0] != alpha.shape[0]:
        raise ValueError(f"expected alpha (B, T, L) and centres (B, characters), got {tuple(alpha.shape)} and "
                         f"{tuple(centres.shape)}")
    steps = min(alpha.shape[1], centres.shape[1])
    x = column_centres(alpha.shape[-1]).to(alpha.device)
    looked = (alpha[:, :steps] * x).sum(-1)  # (B, steps)
    truth = centres[:, :steps].to(alpha.device)
    distance = (looked[..., None] - centres[:, None, :].to(alpha.device)).abs().nan_to_num(float("inf"))
    nearest = distance.argmin(-1)
    valid = ~truth.isnan()
    hit = nearest == torch.arange(steps, device=alpha.device)[None]
    return {"looked": looked, "hit": hit, "valid": valid}


def character_error_rate(predictions: list[str], targets: list[str]) -> float:
    """Sum of Levenshtein distances over the sum of target lengths (rapidfuzz)."""
    from rapidfuzz.distance import Levenshtein

    if isinstance(predictions, str) or isinstance(targets, str):
        raise TypeError("predictions and targets must be lists of strings, not one string")
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"expected as many predictions as targets, at least one; got {len(predictions)} "
                         f"predictions and {len(targets)} targets")
    if not sum(len(t) for t in targets):
        raise ValueError("targets are all empty strings: the character error rate is undefined")
    return sum(Levenshtein.distance(p, t) for p, t in zip(predictions, targets)) / sum(len(t) for t in targets)


@torch.no_grad()
def evaluate_reading(model: R2AM, data, splits=("test_words", "test_random"), beam_size: int = 1,
                     batch_size: int = 500) -> dict[str, float]:
    """Word accuracy, character error rate and (with attention) alignment accuracy on each split.

    Alignment is scored on the characters read correctly: the attended position x^_t must be
    nearer the true centre of character t than to any other. ``splits`` may be one split's name.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    splits = (splits,) if isinstance(splits, str) else splits
    out: dict[str, float] = {}
    for split in splits:
        predictions, targets, hits = [], [], []
        for batch in data.batches(split, batch_size):
            result = read(model, batch["images"], beam_size, polarity="light_on_dark")  # rendered light on dark
            predictions += result["texts"]
            targets += batch["texts"]
            if model.config.attention == "soft":
                scored = alignment(result["alpha"], batch["centres"])
                tokens = result["tokens"][:, :scored["hit"].shape[1]]
                truth = batch["tokens"][:, 1:1 + tokens.shape[1]].to(tokens.device)
                keep = scored["valid"] & (tokens == truth)
                hits.append(scored["hit"][keep])
        name = split.split("_", 1)[1]
        out[f"word_accuracy_{name}"] = sum(p == t for p, t in zip(predictions, targets)) / len(targets)
        out[f"cer_{name}"] = character_error_rate(predictions, targets)
        if hits and sum(len(h) for h in hits):
            out[f"alignment_{name}"] = float(torch.cat(hits).float().mean())
        elif model.config.attention == "soft":
            out[f"alignment_{name}"] = 0.0  # no character read correctly: nothing aligned
    return out


def _evaluate(model, task: str, device) -> tuple[dict[str, float], int]:
    data = TextLines(device=device)
    return evaluate_reading(model, data), 2 * data.config.test_size


def _unused_fields(config: R2AMConfig) -> tuple[str, ...]:
    """Only a recursive block has a first kernel to choose: other blocks' configs do not store the field."""
    return () if config.block == "recursive" else ("first_kernel",)


R2AM_SPEC = ModelSpec(
    name="r2am", description="attention OCR with recursive, recurrent or plain CNNs (Lee & Osindero 2016) on "
                             "rendered text lines: word accuracy and character error rate on held-out words "
                             "and random strings",
    title="R2AM", tasks=TASKS, config_class=R2AMConfig, model_class=R2AM, config=config_for,
    data=lambda task, device: TextLines(device=device), loss=lambda task: r2am_loss, evaluate=_evaluate,
    validate=lambda model, data: evaluate_reading(model, data, ("val_words",)),
    recipes={task: RECIPE for task in TASKS}, targets=TARGETS, default_task="recursive",
    unused_fields=_unused_fields)
SPECS = (R2AM_SPEC,)
