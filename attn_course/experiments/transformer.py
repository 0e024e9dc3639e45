"""Chapter 5's experiments: the Transformer on synthetic sequence tasks (Vaswani et al. 2017, sections 5-6).

The paper's model is :mod:`attn_course.transformer`; here are the course's model size, the
tasks (copy, reverse, sort, date normalisation), the recipe with the rate (5.5), the exact
match a card records, the targets of the shipped models, and how often a head's attention
falls on the source character an output comes from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.sequences import PAD, VOCAB_SIZE, SequenceTask
from ..runtime import evaluating
from ..spec import ModelSpec, Recipe, Target
from ..transformer import COOLDOWN, Transformer, TransformerConfig, noam_optimizer, predict, transformer_loss

# The course's model: small enough to train on one CPU thread in minutes (the paper's base is 512/2048/8/6+6).
COURSE_CONFIG = TransformerConfig(vocab_size=VOCAB_SIZE, d_model=64, heads=4, d_ff=256, encoder_layers=2,
                                  decoder_layers=2, dropout=0.0, norm="post", max_len=64)
WARMUP = 400  # steps of the rate's warm-up in (5.5), at most a quarter of the run


def noam_with_cooldown(model: Transformer, factor: float, steps: int):
    """Adam with the rate (5.5), warmed up over :data:`WARMUP` steps (a quarter of a shorter run) and ramped
    down to zero over the last :data:`~attn_course.transformer.COOLDOWN` of the run."""
    warmup = min(WARMUP, max(steps // 4, 1))
    return noam_optimizer(model, model.config.d_model, warmup, factor, steps, COOLDOWN)


# Batch 64, gradients clipped at norm 1; the learning rate is the factor of (5.5).
_RECIPE = dict(batch_size=64, lr=1.0, optimizer=noam_with_cooldown, clip_grad_norm=1.0, amp=None)
RECIPES = {"copy": Recipe(250, 2000, **_RECIPE), "reverse": Recipe(250, 2000, **_RECIPE),
           "sort": Recipe(250, 2500, **_RECIPE), "dates": Recipe(250, 2800, **_RECIPE)}
TARGETS = {
    "dates": Target("exact_match", at_least=0.99, why="held-out dates written out in ISO form exactly, greedy"),
    "reverse": Target("exact_match", at_least=0.99, why="held-out strings reversed exactly, greedy"),
}


# --------------------------------------------------------------------------- metrics


def same_sequences(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Row-wise equality of two id tensors padded to one width with PAD."""
    if predicted.dim() != 2 or target.dim() != 2 or predicted.shape[0] != target.shape[0]:
        raise ValueError(f"expected predicted and target of shapes (B, T) and (B, T'), got {tuple(predicted.shape)} "
                         f"and {tuple(target.shape)}")
    T = max(predicted.shape[1], target.shape[1])
    a = F.pad(predicted, (0, T - predicted.shape[1]), value=PAD)
    b = F.pad(target, (0, T - target.shape[1]), value=PAD)
    return (a == b).all(1)


@torch.no_grad()
def exact_match(model: Transformer, task, beam_size: int = 1, batch_size: int = 500) -> tuple[float, int]:
    """The share of the task's held-out test set whose whole output (EOS included) is right."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    right, total = 0, 0
    for batch in task.test_batches(batch_size):
        predicted = predict(model, batch["src"], task.max_target_length, beam_size)
        right += int(same_sequences(predicted, batch["tgt"][:, 1:]).sum())
        total += len(batch["src"])
    return right / total, total


def alignment_hits(model: Transformer, task, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """How often each cross-attention head's strongest weight for an output character falls on a source
    character that carries it (the generator's ``carriers``), teacher-forced on the test set.

    Returns ``hits`` (L_dec, h) over every output character that has carriers, ``mean_hits``
    (L_dec,) for the weights averaged over the heads, and ``chance``: the same share for a
    key picked uniformly at random among the non-padding source characters.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    hits = mean_hits = None
    chance, count = 0.0, 0
    with evaluating(model):
        for batch in task.test_batches(batch_size):
            cross = model.attention(batch["src"], batch["tgt"][:, :-1])["cross"]  # (L, B, h, T, S)
            carriers = batch["carriers"]  # (B, T, S)
            rows = carriers.any(-1)  # (B, T): outputs with a known source
            strongest = cross.argmax(-1)  # (L, B, h, T)
            hit = carriers[None, :, None].expand(cross.shape).gather(-1, strongest[..., None])[..., 0]
            per_head = (hit & rows[None, :, None]).sum((1, 3)).float()  # (L, h)
            averaged = carriers[None].expand(cross.shape[0], *carriers.shape).gather(
                -1, cross.mean(2).argmax(-1)[..., None])[..., 0]
            per_layer = (averaged & rows[None]).sum((1, 2)).float()
            hits = per_head if hits is None else hits + per_head
            mean_hits = per_layer if mean_hits is None else mean_hits + per_layer
            lengths = (batch["src"] != PAD).sum(1, keepdim=True).float()
            chance += float((carriers.sum(-1) / lengths)[rows].sum())
            count += int(rows.sum())
    return {"hits": hits / count, "mean_hits": mean_hits / count, "chance": chance / count, "outputs": count}


def _evaluate(model, task: str, device) -> tuple[dict[str, float], int]:
    accuracy, total = exact_match(model, SequenceTask(task, device=device))
    return {"exact_match": accuracy}, total


TRANSFORMER = ModelSpec(
    name="transformer", description="Transformer (Vaswani et al. 2017), post-norm, 2+2 layers, d_model 64, 4 heads",
    title="Transformer", tasks=tuple(RECIPES), config_class=TransformerConfig, model_class=Transformer,
    config=lambda task: COURSE_CONFIG, data=lambda task, device: SequenceTask(task, device=device),
    loss=lambda task: transformer_loss, evaluate=_evaluate, recipes=RECIPES, targets=TARGETS, default_task="dates")
SPECS = (TRANSFORMER,)
