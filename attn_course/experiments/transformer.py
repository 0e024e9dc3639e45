"""Chapter 5's experiments: the Transformer on synthetic sequence tasks (Vaswani et al. 2017, sections 5-6).

The paper's model is :mod:`attn_course.transformer`; here are the course's model size, the
tasks (copy, reverse, sort, date normalisation), the recipe with the rate (5.5), the exact
match a card records, the targets of the shipped models, how often a head's attention
falls on the source character an output comes from, and, for the dates model, how far it
reaches past its generator and a reader that only ever answers with a real day.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import decoding
from ..data.sequences import (BOS, EOS, FIRST_YEAR, ISO_LENGTH, LAST_YEAR, OFF_GENERATOR_FORMATS, PAD, VOCAB_SIZE,
                              SequenceTask, calendar_allowed, decode, encode, encode_batch, is_iso_date,
                              off_generator_dates)
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


# --------------------------------------------------------------------------- dates off the generator


def writes_a_day(tokens: torch.Tensor) -> torch.Tensor:
    """Whether each row of output ids (B, T) is a real day in the data's years, YYYY-MM-DD, then EOS (PAD after)."""
    if tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(f"expected output ids of shape (B, T), got {tuple(tokens.shape)} of {tokens.dtype}")
    answers = []
    for row in tokens.tolist():
        text = decode(row)
        exact = is_iso_date(text) and row[:ISO_LENGTH + 1] == encode(text) + [EOS]
        answers.append(exact and all(t == PAD for t in row[ISO_LENGTH + 1:]))
    return torch.tensor(answers, dtype=torch.bool)


@torch.no_grad()
def off_generator_exact_match(model: Transformer, size: int = 2000, seed: int | None = None,
                              batch_size: int = 500) -> dict:
    """Greedy exact match on dates written in forms the generator never writes (:data:`OFF_GENERATOR_FORMATS`,
    held-out days), and how many outputs are not a real day at all.

    Returns ``exact_match`` and ``not_a_date`` (shares of ``examples``), and ``by_form``: the
    exact match of each form. ``seed`` picks the days (the test set's seed by default).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    data = off_generator_dates(size, **({} if seed is None else {"seed": seed}), device=device)
    right = torch.zeros(len(data["src"]), dtype=torch.bool)
    dates = torch.zeros(len(data["src"]), dtype=torch.bool)
    for start in range(0, len(data["src"]), batch_size):
        rows = slice(start, start + batch_size)
        src = data["src"][rows]
        src = src[:, :int((src != PAD).sum(1).max())]
        predicted = predict(model, src, ISO_LENGTH + 1)
        right[rows] = same_sequences(predicted, data["tgt"][rows, 1:]).cpu()
        dates[rows] = writes_a_day(predicted).cpu()
    forms = data["forms"].cpu()
    return {"exact_match": float(right.float().mean()), "not_a_date": float((~dates).float().mean()),
            "examples": len(right),
            "by_form": {form: float(right[forms == f].float().mean()) for f, form in enumerate(OFF_GENERATOR_FORMATS)}}


@dataclass(frozen=True)
class DateReading:
    """What :func:`translate_dates` makes of one string ``text``.

    ``iso``: always a real day in the data's years, YYYY-MM-DD (the calendar-constrained greedy
    output); ``probability``: the model's own probability of exactly that output, EOS included,
    without the constraint (label smoothing (5.6) trains each of the 11 tokens toward 0.9, so a
    sure answer scores about 0.9^11 = 0.31); ``greedy``: what plain greedy decoding wrote;
    ``reason``: None where greedy wrote a real day (``iso`` is then the same), else why ``iso``
    should not be trusted.
    """

    text: str
    iso: str
    probability: float
    greedy: str
    reason: str | None

    @property
    def corrected(self) -> bool:
        """Whether the calendar had to overrule the model (its own answer was not a real day)."""
        return self.reason is not None


@torch.no_grad()
def translate_dates(model: Transformer, texts: list[str], batch_size: int = 500) -> list[DateReading]:
    """Read each string as a date: greedy decoding with every step masked to the tokens that can still end in a
    real day (:func:`~attn_course.data.sequences.calendar_allowed`), so the answer is always a date; plain
    greedy decoding alongside, to flag where the mask had to overrule the model."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
    bad = [t for t in texts if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"every text must be a non-empty string, got {bad!r}")
    device = next(model.parameters()).device
    readings = []
    with evaluating(model):
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            src = encode_batch(chunk, device)
            plain = decoding.greedy_decode(model, src, ISO_LENGTH + 1, bos=BOS, eos=EOS, pad=PAD)["tokens"]
            constrained = decoding.greedy_decode(model, src, ISO_LENGTH + 1, bos=BOS, eos=EOS, pad=PAD,
                                                 allowed=calendar_allowed)["tokens"]
            tgt = torch.cat([torch.full_like(constrained[:, :1], BOS), constrained[:, :-1]], 1)
            log_p = model(src, tgt).float().log_softmax(-1).gather(-1, constrained[..., None])[..., 0].sum(1)
            for text, ours, theirs, p, day in zip(chunk, constrained, plain, log_p.exp().tolist(),
                                                  writes_a_day(plain).tolist()):
                iso, greedy = decode(ours), decode(theirs)
                reason = None
                if not day:
                    reason = (f"the model's own reading {greedy!r} is not a day in {FIRST_YEAR}-{LAST_YEAR}; "
                              "the calendar overruled it")
                readings.append(DateReading(text, iso, p, greedy, reason))
    return readings


def translate_date(model: Transformer, text: str) -> DateReading:
    """:func:`translate_dates` of one string."""
    return translate_dates(model, [text])[0]


def _evaluate(model, task: str, device) -> tuple[dict[str, float], int]:
    accuracy, total = exact_match(model, SequenceTask(task, device=device))
    return {"exact_match": accuracy}, total


TRANSFORMER = ModelSpec(
    name="transformer", description="Transformer (Vaswani et al. 2017), post-norm, 2+2 layers, d_model 64, 4 heads",
    title="Transformer", tasks=tuple(RECIPES), config_class=TransformerConfig, model_class=Transformer,
    config=lambda task: COURSE_CONFIG, data=lambda task, device: SequenceTask(task, device=device),
    loss=lambda task: transformer_loss, evaluate=_evaluate, recipes=RECIPES, targets=TARGETS, default_task="dates")
SPECS = (TRANSFORMER,)
