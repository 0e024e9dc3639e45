"""Chapter 3's experiments: Show, Attend and Tell on shape scenes (Xu et al. 2015, section 5).

The paper's model is :mod:`attn_course.show_attend_tell`; here are the data (scenes of
shapes with captions and object masks), the metrics of the paper's section 5 (BLEU and,
where the masks allow it, attention correctness), the recipe and the targets of the
shipped checkpoints, and the measurements chapter 3 makes of where a trained model looks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.scenes import VOCAB, ShapeScenes, caption_referents, relation_words_correct
from ..show_attend_tell import SATConfig, ShowAttendTell, caption, sat_loss
from ..spec import ModelSpec, Recipe, Target

DATA_SEED = 0
# Each training scene's caption names its objects from left to right; chapter 3 shows what training on
# every order of the references does to attention.
TRAINING_ORDER = "left_to_right"
# Batch 32, Adam from 2e-3 on a cosine to 1/20 of it, gradients clipped at norm 5, on the 16 x 16 grid for all
# three variants (so that the model without attention differs from the others only in its decoder).
_RECIPE = dict(batch_size=32, lr=2e-3, clip_grad_norm=5.0)
TASKS = ("soft", "hard", "noattn")  # the kind of attention; noattn: the decoder reads the mean annotation
RECIPES = {"soft": Recipe(400, 8000, **_RECIPE), "hard": Recipe(400, 10_000, **_RECIPE),
           "noattn": Recipe(400, 8000, **_RECIPE)}
TARGETS = {
    "soft": Target("attention_hit", at_least=0.80, why="the strongest location on the named object"),
    "hard": Target("attention_hit", at_least=0.80, why="the strongest location on the named object"),
    "noattn": Target("bleu4", why="the decoder without attention soft and hard are compared with"),
}


def course_scenes(device=None) -> ShapeScenes:
    """The chapter's data: the shape scenes of seed :data:`DATA_SEED`, trained in :data:`TRAINING_ORDER`.

    Validation and test use every reference of a scene, in every order."""
    return ShapeScenes(seed=DATA_SEED, device=device or "cpu", training_order=TRAINING_ORDER)


# --------------------------------------------------------------------------- metrics: BLEU and attention correctness


def corpus_bleu(hypotheses: list[str], references: list[list[str]], max_order: int = 4) -> dict[str, float]:
    """Corpus BLEU-1 .. BLEU-``max_order`` (in percent, as the paper reports them) with sacrebleu.

    ``hypotheses`` N strings of space-separated words; ``references`` N lists of reference
    strings (any number each; shorter lists are padded by repeating their own references,
    which changes no count). BLEU-n is the brevity penalty times the geometric mean of the
    clipped 1..n-gram precisions with equal weights 1/n (sacrebleu's ``max_ngram_order=n``),
    over the whole corpus, with no smoothing and no tokenisation (the captions are words
    already), as in the COCO caption evaluation used by the paper.
    """
    from sacrebleu.metrics import BLEU

    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    if isinstance(hypotheses, str) or any(not isinstance(h, str) for h in hypotheses):
        raise TypeError("hypotheses must be a list of strings (one caption each)")
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"expected one non-empty list of references per hypothesis, got {len(hypotheses)} hypotheses "
                         f"and {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every hypothesis needs at least one reference")
    R = max(len(refs) for refs in references)
    streams = [[refs[r % len(refs)] for refs in references] for r in range(R)]
    out = {}
    for n in range(1, max_order + 1):
        bleu = BLEU(tokenize="none", smooth_method="none", max_ngram_order=n, force=True)
        out[f"bleu{n}"] = float(bleu.corpus_score(list(hypotheses), streams).score)
    return out


def location_cover(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, objects, L): the share of each grid cell that an object's mask (B, objects, S, S) covers."""
    if grid < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    if masks.dim() != 4 or masks.shape[-1] % grid:
        raise ValueError(f"expected masks (B, objects, S, S) with S a multiple of {grid}, got {tuple(masks.shape)}")
    return F.avg_pool2d(masks.float(), masks.shape[-1] // grid).flatten(2)


INSIDE_COVER = 0.25  # a cell counts as on an object when a quarter of it is covered (or it is the object's best cell)


def attention_correctness(alpha: torch.Tensor, referents: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every word with a referent object: the attention mass inside its mask and whether the strongest location
    lies on it.

    ``alpha`` (B, T, L) on a square grid; ``referents`` (B, T) object indices (-1: skip);
    ``masks`` (B, objects, S, S). Cell i's mass is spread evenly over its pixels, so the mass
    inside a mask is sum_i alpha_ti cover_i. The strongest cell is "on" the object when at
    least :data:`INSIDE_COVER` of it is covered, or when it is the object's best-covered
    cell (so that a small object that straddles cells still has one). Returns per-word
    tensors ``mass``, ``hit``, and ``chance`` (the mass of uniform attention: the mask's area).
    """
    grid = math.isqrt(alpha.shape[-1])
    if alpha.dim() != 3 or grid * grid != alpha.shape[-1] or referents.shape != alpha.shape[:2]:
        raise ValueError(f"expected alpha (B, T, L) with L a square and referents (B, T), got {tuple(alpha.shape)} "
                         f"and {tuple(referents.shape)}")
    if masks.dim() != 4 or masks.shape[0] != alpha.shape[0]:
        raise ValueError(f"expected masks (B, objects, S, S) with B = {alpha.shape[0]}, got {tuple(masks.shape)}")
    cover = location_cover(masks, grid)  # (B, objects, L)
    words = referents >= 0
    obj = cover.gather(1, referents.clamp(min=0)[..., None].expand(-1, -1, cover.shape[-1]))  # (B, T, L)
    mass = (alpha * obj).sum(-1)
    strongest = obj.gather(-1, alpha.argmax(-1, keepdim=True))[..., 0]
    hit = (strongest >= torch.minimum(obj.max(-1).values, torch.tensor(INSIDE_COVER))) & (strongest > 0)
    return {"mass": mass[words], "hit": hit[words].float(), "chance": obj.mean(-1)[words]}


@torch.no_grad()
def evaluate_captions(model: ShowAttendTell, data, split: str = "test", beam_size: int = 1, batch_size: int = 250,
                      hard: str = "argmax") -> dict[str, float]:
    """BLEU-1..4 of the decoded captions against all references, and attention correctness, on a split of
    :class:`~attn_course.data.scenes.ShapeScenes`.

    Also BLEU-4 on the relational scenes (two or three objects) and on the novel ones (a
    composition held out of training), the share of exactly right captions (equal to one of
    the references), ``relation_accuracy`` (the share of generated relation words that are
    true of the objects named around them) and ``count``. Attention correctness is measured on every generated
    content word whose noun phrase names exactly one object in the scene.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    vocabulary = data.vocabulary
    hypotheses, references, relational, novel = [], [], [], []
    mass, hit, chance, relation = [], [], [], []
    for batch in data.batches(split, batch_size):
        out = caption(model, batch["images"], beam_size, batch["references"].shape[-1] - 1, hard)
        tokens = out["tokens"]
        hypotheses += vocabulary.decode_batch(tokens)
        refs = batch["references"]
        for row, count in zip(refs.tolist(), batch["num_references"].tolist()):
            references.append([vocabulary.decode(r) for r in row[:count]])
        relational.append(batch["layout"].count >= 2)
        novel.append(batch["novel"])
        referents = caption_referents(tokens, batch["layout"])
        correct = relation_words_correct(tokens, batch["layout"])
        relation.append(correct[correct >= 0])
        scores = attention_correctness(out["alpha"], referents, batch["masks"])
        mass.append(scores["mass"])
        hit.append(scores["hit"])
        chance.append(scores["chance"])
    relational, novel = torch.cat(relational).tolist(), torch.cat(novel).tolist()
    result = corpus_bleu(hypotheses, references)
    for name, keep in (("relational", relational), ("novel", novel)):
        chosen = [i for i, k in enumerate(keep) if k]
        if chosen:
            result[f"bleu4_{name}"] = corpus_bleu([hypotheses[i] for i in chosen], [references[i] for i in chosen],
                                                  4)["bleu4"]
    result["exact_match"] = sum(h in refs for h, refs in zip(hypotheses, references)) / len(hypotheses)
    mass, hit, chance = torch.cat(mass), torch.cat(hit), torch.cat(chance)
    result["attention_mass"] = float(mass.mean()) if len(mass) else float("nan")
    result["attention_hit"] = float(hit.mean()) if len(hit) else float("nan")
    result["attention_chance"] = float(chance.mean()) if len(chance) else float("nan")
    result["words_checked"] = len(mass)
    relation = torch.cat(relation)
    result["relation_accuracy"] = float(relation.float().mean()) if len(relation) else float("nan")
    result["count"] = len(hypotheses)
    return result


def _evaluate(model, task: str, device) -> tuple[dict[str, float], int]:
    scores = evaluate_captions(model, course_scenes(device), "test")
    count = scores.pop("count")
    return scores, count


def _validate(model, data: ShapeScenes) -> dict[str, float]:
    scores = evaluate_captions(model, data, "val")
    return {"bleu4": scores["bleu4"], "attention_hit": scores["attention_hit"]}


SAT = ModelSpec(
    name="sat", description="Show, Attend and Tell (Xu et al. 2015) on shape scenes: soft, hard or no attention; "
                            "BLEU in percent and attention correctness on the test split",
    title="Show, Attend and Tell", tasks=TASKS, config_class=SATConfig, model_class=ShowAttendTell,
    config=lambda task: SATConfig(vocab_size=len(VOCAB), attention="none" if task == "noattn" else task),
    data=lambda task, device: course_scenes(device), loss=lambda task: sat_loss, evaluate=_evaluate,
    validate=_validate, recipes=RECIPES, targets=TARGETS, default_task="soft")
SPECS = (SAT,)


# --------------------------------------------------------------------------- where a trained model looks


def noun_phrase_index(tokens: torch.Tensor, article: int) -> torch.Tensor:
    """(B, T) -> (B, T): which noun phrase of the caption each token is in, 1, 2, ...; a phrase starts at each "a"."""
    return (tokens == article).cumsum(-1)


@torch.no_grad()
def attention_hit_by_phrase(model: ShowAttendTell, data, split: str = "test",
                            batch_size: int = 250) -> dict[tuple[int, int], tuple[float, int]]:
    """Where the strongest-location misses are: the hit rate of :func:`attention_correctness`, by place in the scene.

    Returns {(objects in the scene, noun phrase 1, 2 or 3 of the greedy caption): (hit rate,
    content words checked)}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    hits, keys = [], []
    for batch in data.batches(split, batch_size):
        out = caption(model, batch["images"], 1, batch["references"].shape[-1] - 1)
        referents = caption_referents(out["tokens"], batch["layout"])
        hits.append(attention_correctness(out["alpha"], referents, batch["masks"])["hit"])
        phrase = noun_phrase_index(out["tokens"], data.vocabulary.stoi["a"])
        objects = batch["layout"].count.to(phrase.device)[:, None].expand_as(phrase)
        words = referents >= 0
        keys.append(torch.stack([objects[words], phrase[words]], 1))
    return _mean_by_key(torch.cat(hits), torch.cat(keys))


def _mean_by_key(values: torch.Tensor, keys: torch.Tensor) -> dict[tuple[int, ...], tuple[float, int]]:
    """{key: (mean of the values with that key, how many)} for values (N,) and integer keys (N, k)."""
    unique, inverse = keys.unique(dim=0, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(unique))
    sums = torch.zeros(len(unique), dtype=torch.float64, device=values.device).index_add_(0, inverse, values.double())
    return {tuple(key): (float(total / count), int(count))
            for key, total, count in zip(unique.tolist(), sums, counts)}


def attention_maps(alpha: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """alpha (..., L) as grid maps (..., G, G); with ``image_size``, upsampled (bilinear) to (..., S, S) for overlays.

    The paper overlays alpha upsampled by 16 and smoothed with a Gaussian; bilinear
    upsampling keeps the total mass per cell and is enough for grids of 8 x 8 or 16 x 16.
    """
    G = math.isqrt(alpha.shape[-1]) if alpha.dim() else 0
    if G == 0 or G * G != alpha.shape[-1]:
        raise ValueError(f"expected alpha (..., L) with L a square number, got {tuple(alpha.shape)}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive (or None), got {image_size}")
    maps = alpha.reshape(*alpha.shape[:-1], G, G)
    if image_size is None:
        return maps
    flat = maps.reshape(-1, 1, G, G)
    up = F.interpolate(flat, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return up.reshape(*alpha.shape[:-1], image_size, image_size) * (G * G) / image_size ** 2
