"""Graded implement-it exercises: a student writes the code for a derived equation, a checker grades it.

Each chapter's checkers live in ``attn_course/exercises/<paper>.py`` and are called from the
chapter's notebook right after the cell where the student writes the function::

    def soft_attention(scores, values):
        ...                                      # the student's code
    check_soft_attention(soft_attention)         # from attn_course.exercises.attention

A checker runs the student's function and the course's reference on random inputs, on edge
cases and, where it matters, through autograd, and either prints what passed or raises
:class:`ExerciseFailed` with a message that helps: which case, which shape, which entry, and,
when the answer matches a typical mistake (a transposed matrix, a missing scale factor, a
forgotten normalisation), which one. The pieces every checker shares are here:
:func:`compare` (one output against the reference), :func:`run_cases` (a function over many
cases) and :func:`report` (the success line).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch


class ExerciseFailed(AssertionError):
    """The student's function does not (yet) compute what the exercise asks; the message says how."""


@dataclass
class Case:
    """One call of the function under test: its arguments, a name for messages, and known wrong answers.

    ``mistakes`` maps a description of a typical mistake ("the scores are not divided by
    sqrt(d_k)") to the output that mistake produces on these arguments; when the student's
    output matches one, the message names it.
    """

    name: str
    args: Sequence[Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    mistakes: Mapping[str, Any] = field(default_factory=dict)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.to(b.dtype), b, atol=atol, rtol=rtol, equal_nan=False))


def compare(got: Any, expected: Any, what: str, case: Case | None = None, atol: float = 1e-5,
            rtol: float = 1e-4) -> None:
    """Raise :class:`ExerciseFailed` unless tensor (or tuple of tensors) ``got`` equals ``expected``.

    The message names ``what`` and the case, then the first problem found: a wrong type or
    shape (and whether the transpose would fit), NaN or infinity, a known mistake of the
    case, a constant factor, or the entry that differs most.
    """
    where = f"{what} ({case.name})" if case is not None else what
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise ExerciseFailed(f"{where}: expected a tuple of {len(expected)} values, got {_shape(got)}"
                                 + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
        for number, (g, e) in enumerate(zip(got, expected)):
            compare(g, e, f"{what}, value {number}", case, atol, rtol)
        return
    if not isinstance(got, torch.Tensor):
        raise ExerciseFailed(f"{where}: expected a tensor of shape {tuple(expected.shape)}, got {_shape(got)}")
    if got.shape != expected.shape:
        hint = ""
        if got.dim() >= 2 and got.transpose(-1, -2).shape == expected.shape:
            hint = "; the transpose of your result would have the right shape: are two axes swapped?"
        elif got.numel() == expected.numel():
            hint = "; it has the right number of entries: check the order of the axes or a missing reshape"
        raise ExerciseFailed(f"{where}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}{hint}")
    if got.is_floating_point() and not bool(torch.isfinite(got).all()):
        raise ExerciseFailed(f"{where}: the result holds NaN or infinity (a log or a division by zero? a softmax "
                             "over a row that is all minus infinity?)")
    got_f, expected_f = got.detach().double(), expected.detach().double()
    if _close(got_f, expected_f, atol, rtol):
        return
    for mistake, wrong in (case.mistakes if case is not None else {}).items():
        if isinstance(wrong, torch.Tensor) and _close(got_f, wrong.detach().double(), atol, rtol):
            raise ExerciseFailed(f"{where}: the result is what you get when {mistake}")
    if got.dim() >= 2 and got.shape[-1] == got.shape[-2] and _close(got_f.transpose(-1, -2), expected_f, atol, rtol):
        raise ExerciseFailed(f"{where}: the result is the transpose of the expected one")
    ratio = got_f.flatten() / expected_f.flatten()
    usable = expected_f.flatten().abs() > 1e-6
    if usable.sum() > 1 and bool(torch.allclose(ratio[usable], ratio[usable][0].expand(int(usable.sum())),
                                                rtol=1e-4)):
        raise ExerciseFailed(f"{where}: the result is the expected one times {float(ratio[usable][0]):.4g}: "
                             "a constant factor is missing or extra")
    difference = (got_f - expected_f).abs()
    index = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
    raise ExerciseFailed(f"{where}: entry {index} is {float(got_f[index]):.6g}, expected "
                         f"{float(expected_f[index]):.6g} (largest difference {float(difference.max()):.3g})")


def call_student(student: Callable, args: Sequence[Any], what: str, name: str,
                 kwargs: Mapping[str, Any] | None = None, hints: Mapping[str, str] | None = None) -> Any:
    """``student(*args, **kwargs)``, turning a failure into an :class:`ExerciseFailed` that says what happened.

    A stub that still raises ``NotImplementedError`` is "not implemented yet"; any other error names the case
    (and keeps the traceback). ``hints`` maps a piece of an error message (e.g. a shape mismatch that a typical
    mistake causes) to advice added to the message.
    """
    if not callable(student):
        raise ExerciseFailed(f"{what}: expected a function, got {type(student).__name__}")
    try:
        return student(*args, **(kwargs or {}))
    except NotImplementedError:
        raise ExerciseFailed(f"{what}: not implemented yet (the function still raises NotImplementedError)") \
            from None
    except Exception as error:  # the student's code failed: say where, keep the traceback
        advice = "".join(f" ({hint})" for piece, hint in (hints or {}).items() if piece in str(error))
        raise ExerciseFailed(f"{what} ({name}): your function raised {type(error).__name__}: {error}{advice}") \
            from error


def run_cases(student: Callable, reference: Callable, cases: Iterable[Case], what: str, atol: float = 1e-5,
              rtol: float = 1e-4, gradient_of: Sequence[int] = (), hints: Mapping[str, str] | None = None) -> int:
    """Compare ``student`` with ``reference`` on every case; with ``gradient_of`` (argument positions), also the
    gradients of the summed output with respect to those arguments. ``hints``: see :func:`call_student`.
    Returns the number of cases."""
    if not callable(student):
        raise ExerciseFailed(f"{what}: expected a function, got {type(student).__name__}")
    count = 0
    for case in cases:
        expected = reference(*case.args, **case.kwargs)
        args = [a.detach().clone().requires_grad_(True) if i in gradient_of else a for i, a in enumerate(case.args)]
        got = call_student(student, args, what, case.name, case.kwargs, hints)
        compare(got, expected, what, case, atol, rtol)
        if gradient_of:
            _compare_gradients(got, args, reference, case, what, gradient_of, atol, rtol)
        count += 1
    return count


def _compare_gradients(got, args, reference, case: Case, what: str, positions: Sequence[int], atol: float,
                       rtol: float) -> None:
    output = got[0] if isinstance(got, (tuple, list)) else got
    if not output.requires_grad:
        raise ExerciseFailed(f"{what} ({case.name}): the result carries no gradient: is something detached, or "
                             "computed outside torch (numpy, .item(), a Python float)?")
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(7), dtype=output.dtype)
    got_grads = torch.autograd.grad((output * weights).sum(), [args[i] for i in positions], allow_unused=True)
    ref_args = [a.detach().clone().requires_grad_(True) if i in positions else a for i, a in enumerate(case.args)]
    expected = reference(*ref_args, **case.kwargs)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    ref_grads = torch.autograd.grad((expected * weights).sum(), [ref_args[i] for i in positions], allow_unused=True)
    for i, g, e in zip(positions, got_grads, ref_grads):
        if g is None:
            raise ExerciseFailed(f"{what} ({case.name}): no gradient reaches argument {i}")
        compare(g, e if e is not None else torch.zeros_like(g), f"{what}: the gradient with respect to argument {i}",
                case, atol * 10, rtol * 10)


def report(what: str, count: int, extra: str = "") -> None:
    """Print the line a student sees when a checker passes."""
    print(f"\N{CHECK MARK} {what}: matches the reference on {count} cases{extra}")


@contextmanager
def named(values: Sequence[str] = (), arguments: Sequence[str] = ()) -> Iterator[None]:
    """Inside this block, messages of :func:`run_cases` that say which output ("value 0") or which argument
    ("argument 2") they are about are rewritten to name it as the exercise does."""
    try:
        yield
    except ExerciseFailed as failed:
        message = str(failed)
        for number, name in enumerate(values):
            message = message.replace(f", value {number} ", f", the returned {name} ")
        for number, name in enumerate(arguments):
            message = re.sub(rf"\bargument {number}(?=[ :]|$)", f"`{name}`", message)
        if message == str(failed):
            raise
        raise ExerciseFailed(message).with_traceback(failed.__traceback__) from failed.__cause__
