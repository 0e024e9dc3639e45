"""Chapter 6's experiments: the Vision Transformer on chapter 1's digits (Dosovitskiy et al. 2021).

The paper's model is :mod:`attn_course.vit`; here are the data (chapter 1's MNIST
variants, the same 10,000 test canvases RAM is measured on), the course's model sizes,
the recipe per task, the test error a card records, where the class token looks against
the digit's box the generator records, and RAM's multiply-adds counted like ViT's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..baselines import classification_loss
from ..data.ram_variants import RAM_VARIANTS
from ..data.tasks import MNISTVariantTask
from ..ram import RAMConfig, RecurrentAttentionModel, glimpse_paths
from ..runtime import evaluating
from ..spec import ModelSpec, Recipe, Target, train_model
from ..vit import (ViT, ViTConfig, attention_maps, attention_rollout, class_token_attention, multiply_adds,
                   vit_optimizer)

TASKS = ("mnist28", "translated60", "cluttered60")

# The course's sizes: 4 heads, MLP width 2 D, no dropout (every batch is freshly generated, so the
# model never sees an image twice). On the 60 x 60 canvases: 5 x 5 patches of 12 pixels, D = 128, L = 4;
# benchmarks/vit.py times the candidates, and chapter 6 gives the measurements behind the choice.
COURSE_CONFIGS = {
    "mnist28": ViTConfig(image_size=28, patch=7, d_model=64, depth=4, heads=4, mlp_ratio=2),
    "translated60": ViTConfig(image_size=60, patch=12, d_model=128, depth=4, heads=4, mlp_ratio=2),
    "cluttered60": ViTConfig(image_size=60, patch=12, d_model=128, depth=4, heads=4, mlp_ratio=2),
}
WARMUP = 500  # steps of the rate's linear warm-up (6.9), at most a tenth of a shorter run


def warmup_then_cosine(model: ViT, lr: float, steps: int):
    """AdamW with the rate (6.9): :data:`WARMUP` steps of warm-up (a tenth of a shorter run), then a cosine to
    lr / 100."""
    return vit_optimizer(model, lr, steps, warmup=min(WARMUP, max(steps // 10, 1)))


# Batch 64, AdamW (weight decay 0.05) from 1e-3 after the warm-up, on a cosine to 1e-5; gradients clipped at norm 1;
# mixed precision on a GPU.
_RECIPE = dict(batch_size=64, lr=1e-3, optimizer=warmup_then_cosine, clip_grad_norm=1.0, amp=None, log_every=50,
               checkpoint_every=1000, evaluations=5, long_run=2000)
RECIPES = {
    "mnist28": Recipe(300, 6000, **_RECIPE),
    "translated60": Recipe(300, 30_000, **_RECIPE),
    "cluttered60": Recipe(300, 40_000, **_RECIPE),
}
# What the shipped checkpoints must reach: RAM's shipped 1.25% (translated60) and 4.10% (cluttered60), on the
# same test canvases (tests/test_pretrained.py requires a shipped checkpoint for every target).
TARGETS = {
    "translated60": Target("error", at_most=0.0125, why="RAM's shipped 1.25% on the same test canvases"),
    "cluttered60": Target("error", at_most=0.041, why="RAM's shipped 4.10% on the same test canvases"),
}


# --------------------------------------------------------------------------- the metric


def error_rate(model: ViT, task: MNISTVariantTask, batch_size: int = 1000) -> tuple[float, int]:
    """The error on the task's test set (the same canvases chapter 1 measures RAM on), and its size."""
    wrong = torch.zeros((), device=task.device)
    total = 0
    with evaluating(model):
        for batch in task.test_batches(batch_size):
            wrong += (model(batch["images"]).argmax(-1) != batch["labels"]).sum()
            total += len(batch["labels"])
    return float(wrong.item()) / total, total


def _evaluate(model: ViT, task: str, device) -> tuple[dict[str, float], int]:
    error, total = error_rate(model, MNISTVariantTask(task, device=device))
    return {"error": error, "accuracy": 1.0 - error}, total


def _check_config(task: str, config: ViTConfig) -> None:
    size = RAM_VARIANTS[task].size
    if config.image_size != size:
        raise ValueError(f"config.image_size is {config.image_size}, but {task} images are {size} x {size}")


VIT = ModelSpec(
    name="vit", description="Vision Transformer (Dosovitskiy et al. 2021), the course's small sizes per task",
    title="ViT", tasks=TASKS, config_class=ViTConfig, model_class=ViT, config=COURSE_CONFIGS.__getitem__,
    data=lambda task, device: MNISTVariantTask(task, device=device), loss=lambda task: classification_loss,
    evaluate=_evaluate, validate=lambda model, data: {"error": error_rate(model, data)[0]},
    recipes=RECIPES, targets=TARGETS, check_config=_check_config, default_task="mnist28")
SPECS = (VIT,)


# --------------------------------------------------------------------------- where the class token looks


def digit_overlap(boxes: torch.Tensor, image_size: int, patch: int) -> torch.Tensor:
    """(B, N): the share of each patch's pixels inside its image's digit box (x0, y0, x1, y1) in pixels, (B, 4);
    patches numbered row by row, as in :func:`attn_course.vit.patches`."""
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (B, 4) as (x0, y0, x1, y1), got "
                         f"{tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__}")
    if patch < 1 or image_size % patch:
        raise ValueError(f"the patch side ({patch}) must be positive and divide the image side ({image_size})")
    start = torch.arange(0, image_size, patch, device=boxes.device, dtype=torch.float32)  # (G,)
    boxes = boxes.float()

    def along(low, high):  # (B, G): the share of each patch's side inside [low, high)
        inside = torch.minimum(high[:, None], start + patch) - torch.maximum(low[:, None], start)
        return inside.clamp(min=0) / patch

    rows, cols = along(boxes[:, 1], boxes[:, 3]), along(boxes[:, 0], boxes[:, 2])
    return (rows[:, :, None] * cols[:, None, :]).flatten(1)


def _share(weights: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """The share of ``weights`` (..., N) over the patches that falls on the digit, ``overlap`` broadcast (B, ..., N)."""
    return (weights * overlap).sum(-1) / weights.sum(-1)


def attention_on_digit(model: ViT, images: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where the class token looks, per image, against the digit's box (B, 4).

    A patch counts as much as the share of its pixels inside the box (:func:`digit_overlap`),
    so each share below is the attention mass on the digit's pixels when a patch's weight is
    spread evenly over its pixels, out of the mass on all patches (the class token's weight on
    itself left out):

    * ``per_layer`` (B, L): of A_l[0, 1:], averaged over the heads;
    * ``per_head`` (B, L, h): of each head's A_l^h[0, 1:];
    * ``rollout`` (B,): of the rollout's R[0, 1:] (6.7);
    * ``to_class_token`` (B, L): A_l[0, 0], the class token's weight on itself (heads averaged);
    * ``chance`` (B,): the share for attention spread evenly over the patches (box area / image area).
    """
    attentions = attention_maps(model, images)
    c = model.config
    overlap = digit_overlap(boxes, c.image_size, c.patch)  # (B, N)
    cls = class_token_attention(attentions)  # (B, L, h, N)
    rollout = attention_rollout(attentions)[:, 0, 1:]  # (B, N)
    return {"per_layer": _share(cls.mean(2), overlap[:, None]), "per_head": _share(cls, overlap[:, None, None]),
            "rollout": _share(rollout, overlap), "to_class_token": torch.stack([A[:, :, 0, 0] for A in attentions],
                                                                                1).mean(2),
            "chance": overlap.mean(-1)}


@torch.no_grad()
def attention_statistics(model: ViT, task: MNISTVariantTask, batch_size: int = 500,
                         limit: int | None = None) -> dict[str, torch.Tensor | float]:
    """:func:`attention_on_digit` averaged over the task's test set (its first ``limit`` images), with the
    test ``error``: the ViT side of chapter 6's "where each model looks" against RAM's glimpses on the digit."""
    sums: dict[str, torch.Tensor] = {}
    wrong, total = 0, 0
    for batch in task.test_batches(batch_size):
        images, labels, boxes = batch["images"], batch["labels"], batch["boxes"]
        if limit is not None:
            images, labels, boxes = images[:limit - total], labels[:limit - total], boxes[:limit - total]
        if not len(labels):
            break
        shares = attention_on_digit(model, images, boxes)
        for name, value in shares.items():
            sums[name] = value.sum(0) + sums.get(name, 0)
        with evaluating(model):
            wrong += int((model(images).argmax(-1) != labels).sum())
        total += len(labels)
    means = {name: (value / total).cpu() for name, value in sums.items()}
    return {**means, "rollout": float(means["rollout"]), "chance": float(means["chance"]), "error": wrong / total,
            "images": total}


# --------------------------------------------------------------------------- an intervention: a distractor on the digit


def _centred_corner(centre: torch.Tensor, side: int, size: int) -> torch.Tensor:
    """The top-left pixel of a ``side`` x ``side`` square centred at ``centre`` (B, 2) as (x, y), kept inside."""
    return (centre - side / 2).round().long().clamp(0, size - side)


def with_distractor(images: torch.Tensor, boxes: torch.Tensor, side: int = 12, where: str = "digit") -> torch.Tensor:
    """Each canvas (B, 1, S, S) with a ``side`` x ``side`` piece of the next canvas's digit (its box centre)
    pasted by a maximum, either centred on the canvas's own digit box (``where="digit"``) or in the corner
    farthest from it (``"far"``): the same pixels, placed where they cover the digit or where they do not."""
    if images.dim() != 4 or images.shape[1] != 1 or boxes.shape != (len(images), 4) or len(images) < 2:
        raise ValueError(f"expected at least two canvases (B, 1, S, S) and their boxes (B, 4), got "
                         f"{tuple(images.shape)} and {tuple(boxes.shape)}")
    if where not in ("digit", "far"):
        raise ValueError(f"where must be 'digit' or 'far', got {where!r}")
    size = images.shape[-1]
    if not 1 <= side <= size:
        raise ValueError(f"side must be in [1, {size}], got {side}")
    centres = (boxes[:, :2] + boxes[:, 2:]).float() / 2  # (B, 2) as (x, y)
    source = _centred_corner(centres.roll(-1, 0), side, size)  # the next canvas's digit
    if where == "digit":
        target = _centred_corner(centres, side, size)
    else:  # the corner of the canvas farthest from the digit's centre
        target = torch.where(centres > size / 2, 0, size - side).long()
    out = images.clone()
    donors = images.roll(-1, 0)
    for b in range(len(images)):
        (sx, sy), (tx, ty) = source[b].tolist(), target[b].tolist()
        piece = donors[b, :, sy:sy + side, sx:sx + side]
        out[b, :, ty:ty + side, tx:tx + side] = torch.maximum(out[b, :, ty:ty + side, tx:tx + side], piece)
    return out


@torch.no_grad()
def distractor_errors(vit_model: ViT, ram_model: RecurrentAttentionModel, task: MNISTVariantTask, side: int = 12,
                      limit: int | None = None) -> dict[str, dict[str, float]]:
    """Test error of both models on the task's test canvases as they are, with a piece of another digit
    pasted over the digit, and with the same piece far from it (:func:`with_distractor`); RAM follows the
    mean of its policy from the centre. ``{"vit" | "ram": {"clean" | "digit" | "far": error}}``."""
    wrong = {model: {case: 0 for case in ("clean", "digit", "far")} for model in ("vit", "ram")}
    total = 0
    for batch in task.test_batches(500):
        images, labels, boxes = batch["images"], batch["labels"], batch["boxes"]
        if limit is not None:
            images, labels, boxes = images[:limit - total], labels[:limit - total], boxes[:limit - total]
        if len(labels) < 2:
            break
        cases = {"clean": images, "digit": with_distractor(images, boxes, side, "digit"),
                 "far": with_distractor(images, boxes, side, "far")}
        for case, canvases in cases.items():
            with evaluating(vit_model):
                wrong["vit"][case] += int((vit_model(canvases).argmax(-1) != labels).sum())
            wrong["ram"][case] += int((glimpse_paths(ram_model, canvases)["predicted"] != labels).sum())
        total += len(labels)
    return {model: {case: count / total for case, count in cases.items()} for model, cases in wrong.items()}


# --------------------------------------------------------------------------- RAM's cost, counted like ViT's


def multiply_adds_ram(config: RAMConfig, channels: int = 1) -> dict[str, int]:
    """Multiply-adds per image of the matrix products of one RAM forward pass of T = ``config.num_glimpses``
    glimpses, counted from the shapes of :mod:`attn_course.ram` as the package computes them.

    ``sensor``: the glimpse read, two filterbank products per scale (F_Y x, then its F_X^T):
    the package reads through dense box filterbanks, so it touches every pixel;
    ``sensor_crop``: what a sensor that crops and averages its k patches would add up
    (g^2 4^i pixels per patch of scale i), for comparison (not in ``total``). Then the
    glimpse network, the core, and the location (T - 1 times), action and baseline heads
    (every step: the model computes a_t after each glimpse). Biases, nonlinearities and the
    filterbanks' construction are not counted, as in :func:`attn_course.vit.multiply_adds`.
    """
    if not isinstance(config, RAMConfig):
        raise TypeError(f"config must be a RAMConfig, got {type(config).__name__}")
    if config.zoom or config.stop:
        raise ValueError("multiply_adds_ram counts the paper's model: zoom and stop must be off")
    T, g, k, S, C = config.num_glimpses, config.glimpse_size, config.num_scales, config.image_size, channels
    hidden, features, h = config.glimpse_hidden, config.glimpse_features, config.hidden
    sensor = T * C * k * g * (S * S + S * g)  # (k g, H) @ (H, W), then (k, g, W) @ (W, g), per channel
    sensor_crop = T * C * sum(g * g * 4 ** i for i in range(k))
    glimpse_network = T * (k * C * g * g * hidden + 2 * hidden + 2 * hidden * features)
    core = T * (4 * h * (features + h) if config.core == "lstm" else h * (features + h))
    heads = T * h * (config.num_classes + 1) + (T - 1) * h * 2  # action and baseline every step, location T - 1
    counts = {"sensor": sensor, "glimpse_network": glimpse_network, "core": core, "heads": heads}
    return {**counts, "total": sum(counts.values()), "sensor_crop": sensor_crop}


def counted_multiply_adds(model: torch.nn.Module, image: torch.Tensor, **options) -> int:
    """Multiply-adds of the matrix products of one forward pass on ``image`` (1, C, H, W), counted by
    PyTorch's ``FlopCounterMode`` as it runs (half its FLOPs): the check on :func:`attn_course.vit.multiply_adds`
    and :func:`multiply_adds_ram`, and the count for models that have no formula (the baselines). ``options``
    go to the forward pass (RAM: ``sample=False``, the mean of its policy). A ViT runs with its attention
    written out (its fused kernel is not counted on every backend)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or len(image) != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W), got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if isinstance(model, ViT):
        options = {**options, "return_attention": True}
    with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image, **options)
    return counter.get_total_flops() // 2


# --------------------------------------------------------------------------- choosing the patch side and depth

SEARCH_TASK, SEARCH_STEPS = "translated60", 2000
_BASE = COURSE_CONFIGS["translated60"]
SEARCH_CANDIDATES = {
    **{f"P={p}": dataclasses.replace(_BASE, patch=p) for p in (6, 10, 12, 15, 20)},
    **{f"L={depth}": dataclasses.replace(_BASE, depth=depth) for depth in (2, 6)},
    "sinusoidal": dataclasses.replace(_BASE, position="sinusoidal"),
}
SEARCH_RESULTS = Path(__file__).with_name("vit_search.json")


def search_row(name: str, steps: int = SEARCH_STEPS, task: str = SEARCH_TASK, seed: int = 0, device=None,
               progress: bool = False) -> dict:
    """Train candidate ``name`` of :data:`SEARCH_CANDIDATES` for ``steps`` with the task's recipe (its rate
    (6.9) scaled to ``steps``) and measure it: test error on the task's 10,000 canvases, parameters,
    multiply-adds per image (6.8), wall time."""
    if name not in SEARCH_CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; choose one of {', '.join(SEARCH_CANDIDATES)}")
    config = SEARCH_CANDIDATES[name]
    model, result, _ = train_model(VIT, task, steps=steps, seed=seed, device=device, config=config,
                                   progress=progress)
    error, total = error_rate(model, MNISTVariantTask(task, device=model.class_token.device))
    return {"name": name, "config": dataclasses.asdict(config), "task": task, "steps": steps, "seed": seed,
            "error": error, "test_examples": total, "parameters": sum(p.numel() for p in model.parameters()),
            "multiply_adds": multiply_adds(config)["total"], "wall_time_s": round(result.wall_time, 1),
            "device": str(model.class_token.device), "threads": torch.get_num_threads()}


def read_search(path: Path = SEARCH_RESULTS) -> list[dict]:
    """The rows of the search shipped with the course (written by ``tools/vit_search.py``)."""
    rows = json.loads(Path(path).read_text())["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "error" in r for r in rows):
        raise ValueError(f"{path} does not hold a list of search rows")
    return rows
