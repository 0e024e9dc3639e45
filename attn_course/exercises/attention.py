"""Chapter 0's implement-it exercises (What attention is, around Mnih et al. 2014's glimpses): checkers for the
student's soft attention (0.2) and for the expected hard read (0.4), which must equal it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..attention import soft_attention
from . import Case, ExerciseFailed, report, run_cases


def _clone(args: Sequence) -> list:
    return [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]


def _attempt(student: Callable, case: Case):
    """``student``'s output on copies of ``case.args``, or None if it raises: a first look for the mistakes that
    :func:`compare` cannot name because they change the output's shape or make it random. Errors are left for
    :func:`run_cases`, which calls again and says what went wrong (or that it is not implemented yet)."""
    try:
        return student(*_clone(case.args), **case.kwargs)
    except Exception:  # noqa: BLE001 (reported by run_cases)
        return None


def _is_tensor(value, shape) -> bool:
    return isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(shape)


# --------------------------------------------------------------------------- soft attention (0.2)


def _soft_attention_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, (batch, L, D), masked, shift in (
            ("one row of 5 positions", ((), 5, 3), False, 0.0),
            ("a batch of 4 rows", ((4,), 6, 3), False, 0.0),
            ("a batch of 2 with 3 heads", ((2, 3), 7, 5), False, 0.0),
            ("a padding mask", ((4,), 6, 3), True, 0.0),
            ("a padding mask, L = D", ((2, 3), 5, 5), True, 0.0),
            ("large scores, around 1000", ((3,), 4, 2), False, 1000.0)):
        scores = torch.randn(*batch, L, generator=g, dtype=torch.float64) * 2 + shift
        values = torch.randn(*batch, L, D, generator=g, dtype=torch.float64)
        mask = None
        if masked:
            mask = torch.rand(*batch, L, generator=g) > 0.4
            mask[..., 0] = True  # every row may attend to at least one position
            mask[..., 1] = False  # and every row has a masked position
        if shift:  # a softmax that does not subtract the maximum overflows here; the mistakes are not defined
            cases.append(Case(name, (scores, values)))
            continue
        z = lambda alpha, values=values: torch.einsum("...l,...ld->...d", alpha, values)
        e = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
        exp = e.exp()
        mistakes = {}
        for dim in range(scores.dim() - 1):
            mistakes[f"the softmax runs over axis {dim} instead of the positions (the last axis, dim=-1)"] = \
                z(torch.softmax(e, dim))
        mistakes["the weights are exp(e_i) without dividing by their sum (no normalisation)"] = z(exp)
        mistakes["the exponentials are divided by their sum over the whole tensor instead of each row"] = \
            z(exp / exp.sum())
        if L == D:
            mistakes["the weighted sum runs over the feature axis of the values instead of the positions"] = \
                torch.einsum("...l,...dl->...d", torch.softmax(e, -1), values)
        if mask is not None:
            mistakes["the mask is ignored"] = z(torch.softmax(scores, -1))
            mistakes["the mask is applied the wrong way round (True should mean: may attend)"] = \
                z(torch.softmax(scores.masked_fill(mask, float("-inf")), -1))
            mistakes["the masked weights are set to 0 after the softmax, without renormalising"] = \
                z(torch.softmax(scores, -1) * mask)
        cases.append(Case(name, (scores, values) if mask is None else (scores, values, mask), mistakes=mistakes))
    return cases


def check_soft_attention(student) -> None:
    """Grade ``student(scores, values, mask=None) -> (z, alpha)``, equation (0.2), with masks and gradients.

    ``scores`` (..., L), ``values`` (..., L, D), ``mask`` (..., L) bool, True where a position
    may be attended to. Returns ``z`` (..., D) and ``alpha`` (..., L). Graded against
    :func:`attn_course.attention.soft_attention`, including the gradients of ``z`` with
    respect to the scores and the values.
    """
    what = "soft attention (0.2)"
    count = 0
    for case in _soft_attention_cases():  # one by one, so that the first case that goes wrong is the one named
        _look_at_soft_attention(student, case, what)
        count += run_cases(student, soft_attention, [case], what, gradient_of=(0, 1))
    report(what, count, ", gradients with respect to the scores and the values included")


def _look_at_soft_attention(student, case: Case, what: str) -> None:
    """The mistakes of (0.2) that change the output's shape, make it overflow or stop its gradient, named before
    :func:`run_cases` would report them less clearly."""
    scores, values = case.args[:2]
    z_shape, L, D = values.shape[:-2] + values.shape[-1:], values.shape[-2], values.shape[-1]
    got = _attempt(student, case)
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        return  # run_cases says what is wrong
    where = f"{what} ({case.name})"
    if L != D and _is_tensor(got[0], scores.shape) and _is_tensor(got[1], z_shape):
        raise ExerciseFailed(f"{where}: the function returns (alpha, z); return them the other way round, "
                             f"(z, alpha): the context z of shape {tuple(z_shape)} first, then the weights "
                             f"alpha of shape {tuple(scores.shape)}")
    if L != D and _is_tensor(got[0], scores.shape):
        raise ExerciseFailed(f"{where}: z has one entry per position, shape {tuple(scores.shape)}: the "
                             "weighted sum runs over the feature axis of the values instead of the positions; "
                             "z = sum_i alpha_i v_i sums over the L axis (dim -2 of values) and has shape "
                             f"{tuple(z_shape)}")
    if float(scores.max()) > 500 and isinstance(got[0], torch.Tensor) and not bool(torch.isfinite(got[0]).all()):
        raise ExerciseFailed(f"{where}: the result holds NaN or infinity: exp(e_i) overflows for scores "
                             "around 1000. Subtract each row's largest score before exp (the softmax does not "
                             "change) or use torch.softmax")
    expected = soft_attention(*case.args)[0]
    if not (_is_tensor(got[0], expected.shape) and torch.allclose(got[0].detach().double(), expected, atol=1e-5,
                                                                    rtol=1e-4)):
        return  # a wrong value: run_cases names it before any gradient
    inputs = [a.detach().clone().requires_grad_(True) for a in case.args[:2]]
    try:
        z = student(*inputs, *case.args[2:])[0]
        reached = torch.autograd.grad(z.sum(), inputs, allow_unused=True)
    except Exception:  # noqa: BLE001 (no gradient at all, or an error: run_cases says which)
        return
    for name, gradient in zip(("scores", "values"), reached):
        if gradient is None:
            raise ExerciseFailed(f"{where}: no gradient reaches the {name}: are they detached, or turned into "
                                 "numbers outside torch (numpy, .item())? A network learns its scores and values "
                                 "through this read")


# --------------------------------------------------------------------------- soft attention = E[hard] (0.4)


def _hard_read_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    cases = []
    for name, (B, L, D) in (("one row of 5 positions", (1, 5, 3)), ("a batch of 4 rows", (4, 7, 2)),
                            ("L = D", (2, 6, 6)), ("a single position", (3, 1, 4))):
        scores = torch.randn(B, L, generator=g, dtype=torch.float64) * 1.5
        values = torch.randn(B, L, D, generator=g, dtype=torch.float64)
        read = lambda p, values=values: torch.einsum("bl,bld->bd", p, values)
        argmax = scores.argmax(-1)
        mistakes = {
            "the raw scores e_i are used as the probabilities P(s = i): they are not a distribution, apply the "
            "softmax first": read(scores),
            "the values are averaged uniformly (P(s = i) = 1 / L), ignoring the scores": values.mean(-2),
            "only the most likely position is read (the argmax is the mode of s, not its expectation)":
                values[torch.arange(B), argmax],
            "the scores are divided by their sum instead of going through the softmax":
                read(scores / scores.sum(-1, keepdim=True)),
        }
        if B > 1:
            mistakes["the softmax runs over the batch axis (dim 0) instead of the positions (dim -1)"] = \
                read(torch.softmax(scores, 0))
        cases.append(Case(name, (scores, values), mistakes=mistakes))
    return cases


def _soft_context(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The soft context z of (0.2), which (0.4) says the expected hard read equals."""
    return soft_attention(scores, values)[0]


def check_expected_hard_read(student) -> None:
    """Grade ``student(scores, values) -> E[v_s]``, equation (0.4), against the soft context z of (0.2).

    ``scores`` (B, L), ``values`` (B, L, D). The student computes the expectation of the hard
    read ``v_s`` over ``s ~ Categorical(softmax(scores))`` (equation (0.3)) exactly, by
    enumerating the positions: ``sum_i P(s = i) v_i``, shape (B, D). The checker compares it
    with ``z`` from :func:`attn_course.attention.soft_attention`; equal, they show (0.4).
    """
    what = "the expected hard read (0.4)"
    count = 0
    for case in _hard_read_cases():  # one by one, so that the first case that goes wrong is the one named
        _look_at_hard_read(student, case, what)
        count += run_cases(student, _soft_context, [case], what)
    report(what, count, ": your E[v_s] = sum_i P(s = i) v_i equals the soft context z = sum_i alpha_i v_i of "
                        "(0.2) every time, so soft attention is hard attention on average")


def _look_at_hard_read(student, case: Case, what: str) -> None:
    """A sampled (random, or only approximate) expectation, named before :func:`compare`."""
    got = _attempt(student, case)
    if not isinstance(got, torch.Tensor):
        return  # run_cases says what is wrong
    where = f"{what} ({case.name})"
    again = _attempt(student, case)
    if isinstance(again, torch.Tensor) and got.shape == again.shape and \
            not bool(torch.equal(got.detach(), again.detach())):
        raise ExerciseFailed(f"{where}: the function gives a different answer each time it is called: it "
                             "samples positions. An average of sampled reads only estimates the expectation; "
                             "compute it exactly by enumerating the L positions, sum_i P(s = i) v_i")
    expected = _soft_context(*case.args)
    if got.shape != expected.shape or not bool(torch.isfinite(got).all()):
        return
    got = got.detach().double()
    if any(torch.allclose(got, wrong, atol=1e-5, rtol=1e-4) for wrong in case.mistakes.values()):
        return  # a known mistake: run_cases names it
    if 1e-4 < float((got - expected).norm() / expected.norm()) < 0.2:
        raise ExerciseFailed(f"{where}: the result is close to the expected read but not equal to it: if "
                             "you averaged sampled reads, that is an estimate whose error falls only as "
                             "1 / sqrt(M) (0.5); enumerate the L positions instead, sum_i P(s = i) v_i")
