"""Chapter 6's implement-it exercises (the Vision Transformer, Dosovitskiy et al. 2021): checkers for the
student's patch embedding (6.1) and attention rollout (6.7).

* :func:`check_patch_embedding`: ``x_p E + b`` from the images, against :func:`attn_course.vit.patches`
  (the patches numbered row by row, each flattened channel first, then row by row) times E;
* :func:`check_attention_rollout`: R = A~_L ... A~_1 with A~_l = rownorm(mean_h A_l + I), against
  :func:`attn_course.vit.attention_rollout` (Abnar & Zuidema 2020).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ..vit import attention_rollout, patches
from . import Case, named, report, run_cases

# --------------------------------------------------------------------------- (6.1) the patch embedding


def patch_embedding(images: torch.Tensor, E: torch.Tensor, b: torch.Tensor, P: int) -> torch.Tensor:
    """The reference: x_p E + b (B, N, D), x_p from :func:`attn_course.vit.patches`."""
    return patches(images, P) @ E + b


def _flattened(images: torch.Tensor, P: int, order: tuple[int, ...]) -> torch.Tensor:
    """The patches with the axes (B, C, G_h, P_row, G_w, P_col) = (0, 1, 2, 3, 4, 5) taken in ``order``."""
    B, C, H, W = images.shape
    grid = images.reshape(B, C, H // P, P, W // P, P).permute(*order)
    return grid.reshape(B, (H // P) * (W // P), C * P * P)


def _patch_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, (B, C, H, W, P, D) in (
            ("one channel, 8 x 8, P = 4", (2, 1, 8, 8, 4, 5)),
            ("one channel, a wide 6 x 12 image, P = 3 (2 rows of 4 patches)", (2, 1, 6, 12, 3, 4)),
            ("three channels, 8 x 8, P = 2", (2, 3, 8, 8, 2, 6)),
            ("three channels, a tall 12 x 6 image, P = 3", (1, 3, 12, 6, 3, 7)),
            ("two channels, P = 1: every pixel a patch", (2, 2, 3, 4, 1, 3)),
            ("one patch covering the whole 6 x 6 image", (3, 2, 6, 6, 6, 4))):
        images = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
        E = torch.randn(C * P * P, D, generator=g, dtype=torch.float64) / P
        b = torch.randn(D, generator=g, dtype=torch.float64)
        wrong = {
            "each patch is flattened channel last, (P, P, C): flatten it channel first, (C, P, P), the order of a "
            "Conv2d kernel (D, C, P, P) that (6.2) reshapes E into": (0, 2, 4, 3, 5, 1),
            "each patch is flattened column by column: flatten its rows one after the other, (C, P_row, P_col)":
                (0, 2, 4, 1, 5, 3),
            "the patches are numbered column by column: number them row by row, i = row G_w + col":
                (0, 4, 2, 1, 3, 5),
            "the patches are numbered column by column and each flattened column by column": (0, 4, 2, 1, 5, 3),
        }
        mistakes = {what: _flattened(images, P, order) @ E + b for what, order in wrong.items()}
        mistakes["the image is reshaped to (B, N, C P^2) directly: that cuts it into runs of C P^2 pixels in "
                 "memory order (pieces of image rows), not into P x P squares: reshape to (B, C, G_h, P, G_w, P) "
                 "and move the axes first"] = images.reshape(B, -1, C * P * P) @ E + b
        mistakes["F.unfold's (B, C P^2, N) is reshaped to (B, N, C P^2) instead of transposed"] = \
            F.unfold(images, P, stride=P).reshape(B, -1, C * P * P) @ E + b
        mistakes["the bias b is left out"] = _flattened(images, P, (0, 2, 4, 1, 3, 5)) @ E
        cases.append(Case(name, (images, E, b, P), mistakes=mistakes))
    return cases


def check_patch_embedding(student) -> None:
    """Grade ``student(images, E, b, P) -> (B, N, D)``, the patch embedding x_p E + b of (6.1).

    ``images`` (B, C, H, W), H and W multiples of P; ``E`` (C P^2, D); ``b`` (D,). Patch
    i = row G_w + col (row by row, G_w = W / P patches per row) is flattened channel first,
    then row by row: entry (c P + u) P + v of x_p^i is pixel (row P + u, col P + v) of
    channel c. Gradients with respect to the images and E are compared too.
    """
    what = "patch embedding (6.1)"
    hints = {"shapes cannot be multiplied": "E is (C P^2, D): multiply the flattened patches (B, N, C P^2) by E, "
                                            "not by E.T",
             "invalid for input of size": "reshape to (B, C, H / P, P, W / P, P) first, then move the axes"}
    with named(arguments=("images", "E", "b", "P")):
        count = run_cases(student, patch_embedding, _patch_cases(), what, gradient_of=(0, 1), hints=hints)
    report(what, count, ", one to three channels, square and oblong images, gradients included")


# --------------------------------------------------------------------------- (6.7) attention rollout


def _rollout_variant(attentions, identity: bool = True, renormalise: bool = True, order: str = "right",
                     heads: str = "mean", normalise_dim: int = -1) -> torch.Tensor:
    """(6.7) with one thing done wrong (the typical mistakes)."""
    T = attentions[0].shape[-1]
    eye = torch.eye(T, dtype=attentions[0].dtype)
    R = None
    for A in attentions:
        A = A.mean(1) if heads == "mean" else A.sum(1) if heads == "sum" else A.amax(1)
        if identity:
            A = A + eye
        if renormalise:
            A = A / A.sum(normalise_dim, keepdim=True)
        R = A if R is None else (A @ R if order == "right" else R @ A)
    return R


def _rollout_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    cases = []
    for name, (L, B, h, T) in (("two layers, two heads, 5 tokens", (2, 2, 2, 5)),
                               ("three layers, four heads, 7 tokens", (3, 1, 4, 7)),
                               ("one layer, one head", (1, 2, 1, 4)),
                               ("four layers, three heads, a batch of 3", (4, 3, 3, 6)),
                               ("six layers, one head, 10 tokens", (6, 1, 1, 10))):
        attentions = [torch.softmax(torch.randn(B, h, T, T, generator=g, dtype=torch.float64) * 2, -1)
                      for _ in range(L)]
        variant = partial(_rollout_variant, attentions)
        mistakes = {
            "the identity is not added: (6.7) adds I to each layer's averaged weights for the residual path "
            "z + MSA(z)": variant(identity=False),
            f"the rows are not renormalised after adding I (rows of R sum to 2^L = {2 ** L}, not 1)":
                variant(renormalise=False),
            "the layers are multiplied in the wrong order (A~_1 A~_2 ... A~_L): the last layer's A~_L goes on the "
            "left, R_l = A~_l R_{l-1}": variant(order="left"),
            "the heads are summed instead of averaged": variant(heads="sum"),
            "the heads are combined by their maximum instead of their mean (that is a variant of the paper's, "
            "not (6.7))": variant(heads="max"),
            "the columns are normalised instead of the rows": variant(normalise_dim=-2),
            "only the last layer is used": _rollout_variant(attentions[-1:]),
            "only the first layer is used": _rollout_variant(attentions[:1]),
        }
        cases.append(Case(name, (attentions,), mistakes=mistakes))
    return cases


def check_attention_rollout(student) -> None:
    """Grade ``student(attentions) -> R`` (B, T, T), the attention rollout of (6.7).

    ``attentions``: a list of L tensors (B, h, T, T), layer 1 first, each row a softmax.
    R = A~_L ... A~_1 with A~_l = rownorm(mean over heads of A_l, plus I): every row of R
    sums to 1, and R[:, 0, 1:] is how much each patch reaches the class token.
    """
    what = "attention rollout (6.7)"
    count = run_cases(student, attention_rollout, _rollout_cases(), what)
    report(what, count, ", one to six layers, one to four heads")
