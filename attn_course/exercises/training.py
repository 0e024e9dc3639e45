"""Training checks: the student's function plugged into the chapter's model, which then trains for a short run.

A checker compares the student's function with the course's on chosen inputs. A training
check asks the next question: does the model learn with it? The model looks the function
up by its module-level name at every call, so :func:`plugged_in` swaps that name for the
student's function for the length of a ``with`` block (and always puts the course's back);
nothing in the paper modules knows about exercises. :func:`training_check` then trains the
model for a short run through :func:`attn_course.spec.train_model`, the course's one way to
train, once with the student's function and once (remembered for the session) with the
course's, through the same wrapper and with the same seed. It passes when the student's run
makes at least a stated share of the progress the course's run makes, measured on held-out
data, and says by how much each moved; otherwise it raises
:class:`~attn_course.exercises.ExerciseFailed` with the two runs side by side.

:class:`Plugged` is the wrapper. It calls the student's function with the arguments of the
exercise, casts what it returns to the model's precision, and on its first call compares the
structure of the result (tuple or tensor, shapes) with the course's function on the same
arguments; on the first call that trains, it also checks that the result carries a gradient.
Before any of this, :func:`try_once` calls the function on a small example of the exercise, so
that a stub that still raises ``NotImplementedError`` fails at once, before any data is loaded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import torch

from ..spec import ModelSpec, train_model
from . import ExerciseFailed, call_student

# --------------------------------------------------------------------------- plugging a function into a model


@contextmanager
def plugged_in(module: ModuleType, name: str, function: Callable) -> Iterator[None]:
    """Inside the block, ``module.<name>`` is ``function``; the course's function is put back on the way out,
    also when the block raises."""
    if not callable(getattr(module, name, None)):
        raise AttributeError(f"module {module.__name__} has no function {name!r} to replace")
    original = getattr(module, name)
    setattr(module, name, function)
    try:
        yield
    finally:
        setattr(module, name, original)


def _shapes(values: Any) -> str:
    if isinstance(values, torch.Tensor):
        return str(tuple(values.shape))
    if isinstance(values, (tuple, list)):
        return "(" + ", ".join(_shapes(v) for v in values) + ")"
    return type(values).__name__


def _describe(value: Any) -> str:
    """A result as messages name it: "a tensor of shape (2, 3)", "a tuple of 2 values of shapes (2, 3), (4,)",
    "a float"."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        values = f"{len(value)} value" + ("s of shapes " if len(value) != 1 else " of shape ")
        return f"a {type(value).__name__} of {values}" + ", ".join(_shapes(v) for v in value)
    return f"a {type(value).__name__}"


def _tensors(values: Any) -> tuple[torch.Tensor, ...]:
    return (values,) if isinstance(values, torch.Tensor) else tuple(values)


class Plugged:
    """``student`` as the model calls the function it replaces.

    ``arguments(*args, **kwargs)`` turns the model's call into the student's positional
    arguments (the exercise's signature); ``reference`` is the course's function, called with
    the model's own arguments on the first call (and the first call with gradients) to check
    the structure of the student's result. What the student returns is cast to the dtype of
    the course's result, so a function that computes in double precision still fits. A student's
    function may call the course's public function, which looks the replaced name up again: that
    inner call gets the course's function.
    """

    def __init__(self, student: Callable, reference: Callable, what: str, arguments: Callable[..., tuple]):
        if not callable(student):
            raise ExerciseFailed(f"{what}: expected a function, got {type(student).__name__}")
        self.student, self.reference, self.what, self.arguments = student, reference, what, arguments
        self.dtypes: list[torch.dtype] | None = None
        self.gradient_checked = False
        self.inside = False

    def __call__(self, *args, **kwargs):
        if self.inside:  # the student's function called the course's, which looks the name up again
            return self.reference(*args, **kwargs)
        student_args = self.arguments(*args, **kwargs)
        where = "inside the model, on inputs of shapes " + _shapes(
            [a for a in student_args if isinstance(a, torch.Tensor)])
        self.inside = True
        try:
            got = call_student(self.student, student_args, self.what, where)
        finally:
            self.inside = False
        needs_gradient = torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in student_args)
        if self.dtypes is None or (needs_gradient and not self.gradient_checked):
            self._check(got, self.reference(*args, **kwargs), where, needs_gradient)
        if isinstance(got, torch.Tensor):
            return got.to(self.dtypes[0])
        return tuple(value.to(dtype) for value, dtype in zip(got, self.dtypes))

    def _check(self, got: Any, expected: Any, where: str, needs_gradient: bool) -> None:
        """Raise :class:`ExerciseFailed` unless ``got`` has the structure and shapes of ``expected`` (and, when
        training, a gradient wherever the course's result has one)."""
        wanted = f"the model needs {_describe(expected)}"
        if isinstance(expected, torch.Tensor) != isinstance(got, torch.Tensor) or (
                not isinstance(got, torch.Tensor) and (not isinstance(got, (tuple, list))
                                                       or len(got) != len(expected)
                                                       or not all(isinstance(v, torch.Tensor) for v in got))):
            raise ExerciseFailed(f"{self.what} ({where}): your function returned {_describe(got)}; {wanted}")
        for number, (g, e) in enumerate(zip(_tensors(got), _tensors(expected))):
            value = "" if isinstance(expected, torch.Tensor) else f" (value {number})"
            if g.shape != e.shape:
                raise ExerciseFailed(f"{self.what} ({where}): your function returned shape {tuple(g.shape)}{value}; "
                                     f"{wanted}. Run the checker above: it names the usual reason")
            if g.is_floating_point() and not bool(torch.isfinite(g).all()):
                raise ExerciseFailed(f"{self.what} ({where}): your result{value} holds NaN or infinity (a log or a "
                                     "division by zero? a softmax over a row that is all minus infinity?)")
            if needs_gradient and e.requires_grad and not g.requires_grad:
                raise ExerciseFailed(f"{self.what} ({where}): the result carries no gradient, so the model cannot "
                                     "learn through it: is something detached, or computed outside torch (numpy, "
                                     ".item(), torch.tensor(...) of numbers)?")
        self.dtypes = [e.dtype for e in _tensors(expected)]
        self.gradient_checked = self.gradient_checked or needs_gradient


def try_once(student: Callable, what: str, example: tuple) -> None:
    """Call ``student`` once on the exercise's ``example`` arguments, before any data is loaded: a stub fails here
    as "not implemented yet", and a function that raises says so at once."""
    call_student(student, example, what, "a first call, before training")


# --------------------------------------------------------------------------- short runs and their comparison


@dataclass(frozen=True)
class Score:
    """What a training check measures on held-out data: a name for messages, which way is better, and how
    values print (``percent`` or with a ``unit``)."""

    name: str
    higher_is_better: bool
    percent: bool = False
    unit: str = ""

    def format(self, value: float) -> str:
        if self.percent:
            return f"{value:.1%}"
        return f"{value:.1f}" + (f" {self.unit}" if self.unit else "")


@dataclass(frozen=True)
class ShortRun:
    """One short training run: the score of the untrained and of the trained model, and the training's wall
    time in seconds."""

    before: float
    after: float
    seconds: float


@dataclass(frozen=True)
class Setting:
    """Everything a short run depends on besides the plugged-in function: the model (``spec`` and
    ``config``), the task and its ``data``, the run's length, and ``measure(model) -> float``, the score on
    held-out data. ``key`` names the setting for the cache of the course's runs (the data's parameters)."""

    spec: ModelSpec
    task: str
    config: Any
    data: Any
    measure: Callable[[torch.nn.Module], float]
    steps: int
    batch_size: int
    seed: int
    device: str
    key: tuple

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


def short_run(setting: Setting, progress: bool = False) -> ShortRun:
    """Score the untrained model (built as :func:`~attn_course.spec.train_model` builds it, same seed), train it
    for ``setting.steps`` steps, and score it again; the global random state is left as it was."""
    spec = replace(setting.spec, validate=None)  # the check scores the model itself, once, at the end
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setting.seed)
        before = setting.measure(spec.model_class(setting.config).to(setting.device))
        start = time.perf_counter()
        model, _, _ = train_model(spec, setting.task, steps=setting.steps, batch_size=setting.batch_size,
                                  config=setting.config, data=setting.data, device=setting.device,
                                  seed=setting.seed, progress=progress)
        seconds = time.perf_counter() - start
        after = setting.measure(model)
    return ShortRun(float(before), float(after), seconds)


_COURSE_RUNS: dict[tuple, ShortRun] = {}  # the course's function's runs, by setting: each is trained once a session


def training_check(student: Callable, *, what: str, model: str, module: ModuleType, name: str,
                   arguments: Callable[..., tuple], setting: Setting, score: Score, share: float,
                   progress: bool = False) -> tuple[ShortRun, ShortRun]:
    """Train ``model`` with ``student`` plugged in for ``module.<name>``, then with the course's function, and
    compare; returns (the student's run, the course's run) after printing the success line.

    The check passes when the student's run moves the score from the course's starting value
    by at least ``share`` of what the course's run does in the same steps. Errors of the
    student's code, a loss that becomes NaN, or too little progress raise :class:`ExerciseFailed`.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1], got {share!r}")
    reference = getattr(module, name)
    try:
        with plugged_in(module, name, Plugged(student, reference, what, arguments)):
            mine = short_run(setting, progress)
    except FloatingPointError as error:  # the training loop's guard: "the training loss became nan at step k; ..."
        raise ExerciseFailed(f"{what}: with your function in {model}, {str(error).split(';')[0]}: does your "
                             "function return NaN or infinity for some inputs (a log or a division by zero?)") \
            from error
    key = (module.__name__, name, setting.task, setting.config, setting.steps, setting.batch_size, setting.seed,
           setting.device, setting.key)
    if key not in _COURSE_RUNS:
        with plugged_in(module, name, Plugged(reference, reference, what, arguments)):
            _COURSE_RUNS[key] = short_run(setting, progress)
    course = _COURSE_RUNS[key]
    sign = 1.0 if score.higher_is_better else -1.0
    progress_course = sign * (course.after - course.before)
    if not progress_course > 0:
        raise RuntimeError(f"the course's own run did not learn in {setting.steps} steps ({score.name} "
                           f"{score.format(course.before)} -> {score.format(course.after)}): give the check more steps")
    needed = course.before + sign * share * progress_course
    ran = f"in {setting.steps} steps"
    if not math.isfinite(mine.after) or sign * (mine.after - course.before) < share * progress_course:
        raise ExerciseFailed(
            f"{what}: {model} did not learn enough with your function: {ran} its {score.name} went from "
            f"{score.format(mine.before)} to {score.format(mine.after)}. With the course's function it goes from "
            f"{score.format(course.before)} to {score.format(course.after)} in the same steps, and the check asks "
            f"for {score.format(needed)} or {'more' if score.higher_is_better else 'less'} ({share:.0%} of that "
            "progress). Your function runs inside the model, but something in it holds learning back: run the "
            "checker above, which compares it with the course's function and names the usual mistakes.")
    print(f"\N{CHECK MARK} {what} trains {model}: with your function its {score.name} went from "
          f"{score.format(mine.before)} to {score.format(mine.after)} {ran} ({mine.seconds:.0f} s); "
          f"with the course's, from {score.format(course.before)} to {score.format(course.after)}")
    return mine, course
