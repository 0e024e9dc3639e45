"""Chapter 6's checkers: the reference passes, each typical mistake fails naming it, a stub says "not implemented"."""

import pytest
import torch
import torch.nn.functional as F

from attn_course.exercises import ExerciseFailed
from attn_course.exercises.vit import check_attention_rollout, check_patch_embedding


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- (6.1) the patch embedding


def embed(images, E, b, P, order=(0, 2, 4, 1, 3, 5), bias=True):
    """x_p E + b with the axes (B, C, G_h, P_row, G_w, P_col) of the cut image taken in ``order``."""
    B, C, H, W = images.shape
    x_p = images.reshape(B, C, H // P, P, W // P, P).permute(*order).reshape(B, -1, C * P * P)
    return x_p @ E + (b if bias else 0)


def with_unfold(images, E, b, P):
    """Another right answer: F.unfold's (B, C P^2, N), transposed."""
    return F.unfold(images, P, stride=P).transpose(1, 2) @ E + b


def with_a_convolution(images, E, b, P):
    """(6.2): the same map as a strided convolution with E reshaped into its kernel."""
    D, C = E.shape[1], images.shape[1]
    return F.conv2d(images, E.T.reshape(D, C, P, P), b, stride=P).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("right", [embed, with_unfold, with_a_convolution], ids=["permute", "unfold", "conv"])
def test_patch_embedding_passes(right, capsys):
    check_patch_embedding(right)
    assert "\N{CHECK MARK} patch embedding (6.1)" in capsys.readouterr().out


def wrong_order(order):
    return lambda images, E, b, P: embed(images, E, b, P, order)


@pytest.mark.parametrize("wrong, message", [
    (wrong_order((0, 2, 4, 3, 5, 1)), r"flattened channel last, \(P, P, C\)"),
    (wrong_order((0, 2, 4, 1, 5, 3)), "each patch is flattened column by column"),
    (wrong_order((0, 4, 2, 1, 3, 5)), "the patches are numbered column by column: number them row by row"),
    (wrong_order((0, 4, 2, 1, 5, 3)), "numbered column by column and each flattened column by column"),
    (lambda images, E, b, P: images.reshape(len(images), -1, E.shape[0]) @ E + b, "reshaped to .* directly"),
    (lambda images, E, b, P: F.unfold(images, P, stride=P).reshape(len(images), -1, E.shape[0]) @ E + b,
     "reshaped to .* instead of transposed"),
    (lambda images, E, b, P: embed(images, E, b, P, bias=False), "the bias b is left out"),
    (lambda images, E, b, P: embed(images, E.T.contiguous(), b, P), r"not by E\.T"),
    (lambda images, E, b, P: embed(images, E, b, P).detach(), "carries no gradient"),
    (stub, "not implemented yet"),
], ids=["channel_last", "columns_in_patch", "patches_by_column", "both_by_column", "plain_reshape",
        "unfold_reshaped", "no_bias", "E_transposed", "detached", "stub"])
def test_patch_embedding_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_patch_embedding(wrong)


# --------------------------------------------------------------------------- (6.7) attention rollout


def rollout(attentions, identity=True, renormalise=True, left_to_right=False, heads="mean", rows=True):
    T = attentions[0].shape[-1]
    R = torch.eye(T, dtype=attentions[0].dtype)
    for A in attentions:
        A = {"mean": A.mean(1), "sum": A.sum(1), "max": A.amax(1)}[heads]
        if identity:
            A = A + torch.eye(T, dtype=A.dtype)
        if renormalise:
            A = A / A.sum(-1 if rows else -2, keepdim=True)
        R = R @ A if left_to_right else A @ R
    return R


def halves(attentions):
    """Abnar & Zuidema's own form, 0.5 A + 0.5 I, whose rows already sum to 1: the same rollout."""
    R = None
    for A in attentions:
        A = 0.5 * A.mean(1) + 0.5 * torch.eye(A.shape[-1], dtype=A.dtype)
        R = A if R is None else A @ R
    return R


def stacked(attentions):
    """The same, with the layers stacked into one tensor (L, B, h, T, T) and multiplied in a loop."""
    A = torch.stack(list(attentions)).mean(2)
    A = A + torch.eye(A.shape[-1], dtype=A.dtype)
    A = A / A.sum(-1, keepdim=True)
    R = A[0]
    for layer in A[1:]:
        R = torch.bmm(layer, R)
    return R


@pytest.mark.parametrize("right", [rollout, halves, stacked], ids=["written_out", "halves", "stacked"])
def test_attention_rollout_passes(right, capsys):
    check_attention_rollout(right)
    assert "\N{CHECK MARK} attention rollout (6.7)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda A: rollout(A, identity=False), "the identity is not added"),
    (lambda A: rollout(A, renormalise=False), "the rows are not renormalised"),
    (lambda A: rollout(A, left_to_right=True), "multiplied in the wrong order"),
    (lambda A: rollout(A, heads="sum"), "summed instead of averaged"),
    (lambda A: rollout(A, heads="max"), "their maximum instead of their mean"),
    (lambda A: rollout(A, rows=False), "the columns are normalised instead of the rows"),
    (lambda A: rollout(A[-1:]), "only the last layer is used"),
    (lambda A: rollout(A).transpose(-1, -2), "transpose of the expected one"),
    (stub, "not implemented yet"),
], ids=["no_identity", "not_renormalised", "wrong_order", "heads_summed", "heads_max", "columns", "last_layer",
        "transposed", "stub"])
def test_attention_rollout_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_attention_rollout(wrong)
