"""Chapter 2's experiments: DRAW on binarised MNIST, with and without attention (Gregor et al. 2015, section 4).

The paper's model is :mod:`attn_course.draw`; here are the data, the recipe, the test
bound a card records and the target of the shipped checkpoint.
"""

from __future__ import annotations

import torch

from ..data.binarized import BinarizedMNIST
from ..draw import CPU_CONFIG, DRAW, PAPER_CONFIG, DRAWConfig, draw_loss, negative_elbo
from ..runtime import evaluating
from ..spec import ModelSpec, Recipe, Target

CONFIGS = {"mnist": CPU_CONFIG, "mnist_paper": PAPER_CONFIG}  # task -> configuration
# Batch 64, Adam from 1e-3 on a cosine to 1e-5, gradients clipped at norm 10; mixed precision off on a GPU
# (the bound sums hundreds of per-pixel and per-step terms, and the LSTMs are small).
_RECIPE = dict(batch_size=64, lr=1e-3, final_lr=1e-5, clip_grad_norm=10.0, checkpoint_every=1000, evaluations=5,
               long_run=5000)
RECIPES = {"mnist": Recipe(300, 17_000, **_RECIPE), "mnist_paper": Recipe(300, 100_000, **_RECIPE)}
EVAL_SEED = 0  # the posterior samples of the test bound


def config_for(task: str, attention: bool = True) -> DRAWConfig:
    """The configuration of ``task``, with or without attention."""
    if task not in CONFIGS:
        raise ValueError(f"unknown DRAW task {task!r}; choose one of: {', '.join(CONFIGS)}")
    base = CONFIGS[task]
    return base if attention else base.without_attention()


def evaluate_bound(model: DRAW, data: BinarizedMNIST, seed: int = EVAL_SEED,
                   batch_size: int = 1000) -> dict[str, float]:
    """The test negative log-likelihood bound L = L^x + L^z in nats per image, one posterior sample each.

    The noise comes from a CPU generator seeded with ``seed``, so the number is the same on
    every device (up to rounding).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(2, dtype=torch.float64)
    count = 0
    with evaluating(model):
        for batch in data.test_batches(batch_size):
            L_x, L_z = negative_elbo(model(batch["images"], generator=generator), batch["images"])
            totals += torch.stack([L_x.sum(), L_z.sum()]).double().cpu()
            count += len(L_x)
    L_x, L_z = (totals / count).tolist()
    return {"nll_bound": L_x + L_z, "L_x": L_x, "L_z": L_z, "count": count}


def _evaluate(model, task: str, device) -> tuple[dict[str, float], int]:
    result = evaluate_bound(model, BinarizedMNIST(device=device))
    count = result.pop("count")
    return result, count


def _spec(attention: bool) -> ModelSpec:
    return ModelSpec(
        name="draw" if attention else "draw_noattn",
        description=("DRAW with read 2x2 / write 5x5 attention (Gregor et al. 2015); test NLL bound in nats"
                     if attention else
                     "DRAW without attention: reads [x, x^], writes the whole canvas (Gregor et al. 2015)"),
        title="DRAW" if attention else "DRAW without attention", kind="draw",
        tasks=tuple(CONFIGS), config_class=DRAWConfig, model_class=DRAW,
        config=lambda task: config_for(task, attention),
        data=lambda task, device: BinarizedMNIST(device=device), loss=lambda task: draw_loss,
        evaluate=_evaluate, validate=lambda model, data: {"nll_bound": evaluate_bound(model, data)["nll_bound"]},
        recipes=RECIPES,
        targets={"mnist": Target("nll_bound", at_most=90.0, why="the course's target at T = 16 (the paper's "
                                 "T = 64 model: 80.97 nats)")} if attention else
                {"mnist": Target("nll_bound", why="the comparison for DRAW with attention, trained the same way")},
        default_task="mnist")


DRAW_SPEC = _spec(attention=True)
DRAW_NOATTN = _spec(attention=False)
SPECS = (DRAW_SPEC, DRAW_NOATTN)
