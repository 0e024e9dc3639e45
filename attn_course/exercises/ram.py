"""Chapter 1's implement-it exercises (the Recurrent Attention Model, Mnih et al. 2014): checkers for the
student's REINFORCE term of the hybrid loss (1.6), the Gaussian policy's log-likelihood (1.5) and the glimpse
sensor rho(x, l). :func:`train_with_glimpse_sensor` plugs the student's sensor into RAM and trains the model for
a short run (see :mod:`attn_course.exercises.training`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from .. import ram
from ..data.tasks import MNISTVariantTask
from ..experiments.ram import RAM, error_rate
from ..ram import PAPER_CONFIGS, RAMConfig, RecurrentAttentionModel, gaussian_log_likelihood, glimpse_sensor
from . import Case, ExerciseFailed, compare, report, run_cases
from .training import Score, Setting, training_check, try_once


def _clone(args: Sequence) -> list:
    return [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]


def _attempt(student: Callable, case: Case):
    """``student``'s output on copies of ``case.args``, or None if it raises: a first look for the mistakes that
    :func:`compare` cannot name because they change the output's shape. Errors are left for :func:`run_cases`,
    which calls again and says what went wrong (or that it is not implemented yet)."""
    try:
        return student(*_clone(case.args), **case.kwargs)
    except Exception:  # noqa: BLE001 (reported by run_cases)
        return None


# --------------------------------------------------------------------------- the REINFORCE term of (1.6)


def reinforce_term(log_pi: torch.Tensor, R: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The REINFORCE term of (1.6) exactly as :func:`attn_course.ram.hybrid_loss` computes it.

    ``log_pi`` (B, T-1): log pi(l_t | s_{1:t}) for t = 1, ..., T-1; ``R`` (B,): the reward;
    ``b`` (B, T-1): the baselines b_1, ..., b_{T-1} of the same steps (the model's
    ``out["baselines"][:, :-1]``: b_T, after the last glimpse, only enters the regression).
    ``-mean_over_batch(sum_t log_pi_t (R - b_t))`` with ``R - b_t`` a constant.
    ``tests/test_exercises_ram.py`` checks it against ``hybrid_loss`` itself.
    """
    advantage = (R[:, None] - b).detach()
    return -(log_pi * advantage).sum(1).mean()


def _reinforce_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, (B, steps), rewards in (("a batch of 5, T = 6 glimpses", (5, 5), None),
                                      ("a batch of 4, T = 6 glimpses", (4, 5), None),
                                      ("one image", (1, 3), None), ("every answer right", (3, 4), 1.0),
                                      ("every answer wrong", (3, 4), 0.0), ("T = 2: one location", (6, 1), None)):
        log_pi = torch.randn(B, steps, generator=g, dtype=torch.float64) * 2
        if rewards is None:
            R = (torch.rand(B, generator=g) > 0.5).double()
            R[0] = 1.0 - R[-1] if B > 1 else 1.0  # both rewards occur
        else:
            R = torch.full((B,), rewards, dtype=torch.float64)
        b = torch.rand(B, steps, generator=g, dtype=torch.float64)
        cases.append(Case(name, (log_pi, R, b)))
    # one from the model itself: its log_pi, its reward, its baselines as hybrid_loss slices them
    with torch.random.fork_rng(devices=[]):  # the model's initial weights, leaving the caller's seed alone
        torch.manual_seed(0)
        model = RecurrentAttentionModel(PAPER_CONFIGS["mnist28"])
    images, labels = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    with torch.no_grad():
        out = model(images, generator=g)
    R = (out["log_probs"].argmax(-1) == labels).float()
    cases.append(Case("a RAM forward pass, 8 images, T = 6", (out["log_pi"], R, out["baselines"][:, :-1])))
    for case in cases:
        log_pi, R, b = case.args
        B, steps = log_pi.shape
        advantage = R[:, None] - b
        expected = reinforce_term(log_pi, R, b)
        case.mistakes = {
            "the baseline is not subtracted: -sum_t log pi_t R instead of -sum_t log pi_t (R - b_t)":
                -(log_pi * R[:, None]).sum(1).mean(),
            "the sign is flipped: the loss is minimised, so the term is -sum_t log pi_t (R - b_t) (and the "
            "advantage is R - b_t, not b_t - R)": -expected,
            "the baseline is added, R + b_t, instead of subtracted": -(log_pi * (R[:, None] + b)).sum(1).mean(),
            "the log-likelihoods are averaged over the T - 1 steps (a mean over time, or over all entries) "
            "instead of summed over t as in (1.6); hybrid_loss sums over time and averages over the batch":
                -(log_pi * advantage).mean(),
            "the batch is summed instead of averaged: hybrid_loss sums over time and averages over the batch":
                -(log_pi * advantage).sum(),
        }
        if B == steps:  # where R - b broadcasts without an error
            case.mistakes["R is lined up with the steps instead of the images: R - b with R (B,) and b (B, T-1) "
                          "broadcasts R along the last axis; use R[:, None] - b"] = \
                -(log_pi * (R[None, :] - b)).sum(1).mean()
    return cases


def _check_reinforce_gradients(student, case: Case, what: str) -> None:
    """The gradient of the student's term: -(R - b_t) / B with respect to log pi_t, zero with respect to b."""
    log_pi, R, b = (a.detach().clone() for a in case.args)
    log_pi.requires_grad_(True)
    b.requires_grad_(True)
    where = f"{what} ({case.name})"
    try:
        got = student(log_pi, R, b)
    except Exception as error:
        raise ExerciseFailed(f"{where}: your function raised {type(error).__name__} when log_pi and b require "
                             f"gradients: {error}") from error
    if not got.requires_grad:
        raise ExerciseFailed(f"{where}: the result carries no gradient with respect to log_pi: is log_pi detached, "
                             "or the term computed outside torch (numpy, .item(), a Python float)? The gradient "
                             "of this term is what trains the location network")
    grad_log_pi, grad_b = torch.autograd.grad(got, [log_pi, b], allow_unused=True)
    if grad_log_pi is None:
        raise ExerciseFailed(f"{where}: no gradient reaches log_pi: is it detached?")
    B = log_pi.shape[0]
    advantage = (R[:, None] - b).detach()
    gradient_case = Case(case.name, case.args, mistakes={
        "the baseline is not subtracted": -R[:, None].expand_as(advantage) / B,
        "the sign is flipped": advantage / B,
    })
    compare(grad_log_pi, -advantage / B, f"{what}: the gradient with respect to log_pi", gradient_case,
            atol=1e-6, rtol=1e-4)
    if grad_b is not None and bool(grad_b.abs().max() > 1e-12):
        if torch.allclose(grad_b.double(), log_pi.detach().double() / B, atol=1e-6, rtol=1e-4):
            raise ExerciseFailed(
                f"{where}: the value is right, but R - b is not detached: the gradient with respect to b is "
                "log pi_t / B, so this term would also train the baseline, pushing b_t to shrink the REINFORCE loss "
                "instead of to predict R. In (1.6) R - b_t is a constant (the baseline learns only from its own "
                "regression term); use (R - b).detach()")
        raise ExerciseFailed(f"{where}: the gradient with respect to b should be zero (R - b_t is a constant in "
                             f"(1.6)), but it is not: largest entry {float(grad_b.abs().max()):.3g}; use "
                             "(R - b).detach()")


def check_reinforce_term(student) -> None:
    """Grade ``student(log_pi, R, b) -> scalar``, the REINFORCE term of the hybrid loss (1.6).

    ``log_pi`` (B, T-1), ``R`` (B,) rewards in {0, 1}, ``b`` (B, T-1) the baselines of the
    same steps; returns ``-mean_over_batch(sum_t log_pi_t (R - b_t))`` with ``R - b`` a
    constant, as :func:`attn_course.ram.hybrid_loss` does. Checks the value, the gradient
    with respect to ``log_pi`` and that none reaches ``b``.
    """
    what = "the REINFORCE term of (1.6)"
    count = 0
    for case in _reinforce_cases():  # one by one, so that the first case that goes wrong is the one named
        got, log_pi = _attempt(student, case), case.args[0]
        if isinstance(got, torch.Tensor) and got.shape == log_pi.shape[:1]:
            raise ExerciseFailed(f"{what} ({case.name}): the result has one value per image, shape (B,): average "
                                 "it over the batch (the loss is one number)")
        if isinstance(got, torch.Tensor) and got.shape == log_pi.shape:
            raise ExerciseFailed(f"{what} ({case.name}): the result has one value per image and step, shape "
                                 "(B, T-1): sum over the steps t, then average over the batch")
        count += run_cases(student, reinforce_term, [case], what)
        _check_reinforce_gradients(student, case, what)
    report(what, count, ", the gradient with respect to log_pi included, and none reaches the baseline")


# --------------------------------------------------------------------------- the Gaussian policy (1.5)


def _gaussian_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    cases = []
    for name, shape, std, same in (("a batch of 16 locations, sigma = 0.15", (16,), 0.15, False),
                                   ("T - 1 = 5 steps of 3 images, sigma = 0.5", (5, 3), 0.5, False),
                                   ("one location, sigma = 2", (1,), 2.0, False),
                                   ("l = mu, sigma = 0.17", (4,), 0.17, True)):
        mu = torch.tanh(torch.randn(*shape, 2, generator=g, dtype=torch.float64))
        l = mu.clone() if same else mu + std * torch.randn(*shape, 2, generator=g, dtype=torch.float64)
        expected = gaussian_log_likelihood(l, mu, std)
        log2pi, squared = math.log(2 * math.pi), ((l - mu) ** 2).sum(-1)
        constants = -2 * math.log(std) - log2pi
        mistakes = {
            "the -log(sigma) term is missing (the normalisation of each coordinate's density has it)":
                expected + 2 * math.log(std),
            "the 2 pi constant is missing (-log(2 pi) for the two coordinates together, -log(2 pi) / 2 each)":
                expected + log2pi,
            "the 2 pi constant is counted twice: it is -log(2 pi) / 2 per coordinate, -log(2 pi) in all":
                expected - log2pi,
            "log(sigma^2) stands where log(sigma) goes: the variance is used where the standard deviation goes":
                expected - 2 * math.log(std),
            "sigma^2 stands where sigma goes in the square: ((l - mu) / sigma^2)^2 instead of "
            "((l - mu) / sigma)^2, the variance used where the standard deviation goes":
                -0.5 * squared / std ** 4 + constants,
            "(l - mu)^2 is divided by 2 sigma instead of 2 sigma^2: the standard deviation used where the "
            "variance goes": -0.5 * squared / std + constants,
            "the 1/2 in front of ||l - mu||^2 / sigma^2 is missing": -squared / std ** 2 + constants,
            "the squared distance has the wrong sign: the log-density falls as l moves away from mu":
                0.5 * squared / std ** 2 + constants,
            "the two coordinates are averaged instead of summed (the density of l is the product of the "
            "two coordinates' densities, so their logs add)": expected / 2,
        }
        cases.append(Case(name, (l, mu, std), mistakes=mistakes))
    return cases


def check_gaussian_log_likelihood(student) -> None:
    """Grade ``student(l, mu, std) -> log N(l; mu, std^2 I)``, equation (1.5), and its gradient in mu.

    ``l`` and ``mu`` (..., 2) locations and means, ``std`` a float (sigma). Returns (...,):
    the log-density summed over the two coordinates, as
    :func:`attn_course.ram.gaussian_log_likelihood`.
    """
    what = "the Gaussian policy's log-likelihood (1.5)"
    count = 0
    for case in _gaussian_cases():  # one by one, so that the first case that goes wrong is the one named
        got, l = _attempt(student, case), case.args[0]
        if isinstance(got, torch.Tensor) and got.shape == l.shape:
            raise ExerciseFailed(f"{what} ({case.name}): the result has shape {tuple(l.shape)}, one log-density "
                                 "per coordinate: the two coordinates are not summed. The policy's density is the "
                                 "product of the x and y densities, so sum their logs over the last axis, "
                                 f".sum(-1), for shape {tuple(l.shape[:-1])}")
        if isinstance(got, torch.Tensor) and got.dim() == 0 and l.dim() > 1 and l.shape[0] > 1:
            raise ExerciseFailed(f"{what} ({case.name}): the result is one number: sum over the last axis only "
                                 "(the two coordinates), keeping one log-likelihood per location, shape "
                                 f"{tuple(l.shape[:-1])}")
        count += run_cases(student, gaussian_log_likelihood, [case], what, gradient_of=(1,))
    report(what, count, ", the gradient with respect to mu included")


# --------------------------------------------------------------------------- the glimpse sensor rho(x, l)


def _crop_and_average(images: torch.Tensor, g: int, k: int, cols: Sequence[int], rows: Sequence[int],
                      pool: str = "avg", padding: str = "constant") -> torch.Tensor:
    """Patches cropped around whole pixel centres (``cols``, ``rows``) and pooled down to g x g: the sensor's
    wrong answers (centres moved, pooling or padding changed)."""
    batch, channels = images.shape[:2]
    out = images.new_zeros(batch, k, channels, g, g)
    for b_ in range(batch):
        for i in range(k):
            side = g * 2 ** i
            padded = F.pad(images[b_][None], (side,) * 4, mode=padding)[0]
            x0, y0 = int(cols[b_]) - side // 2 + side, int(rows[b_]) - side // 2 + side
            crop = padded[:, y0:y0 + side, x0:x0 + side]
            out[b_, i] = (F.avg_pool2d(crop[None], 2 ** i)[0] if pool == "avg" else
                          F.max_pool2d(crop[None], 2 ** i)[0] if pool == "max" else crop[:, ::2 ** i, ::2 ** i])
    return out


def _sensor_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    cases = []
    for name, (B, C, H, W), size, k, centres in (
            ("one image, one scale, off centre", (1, 1, 28, 28), 8, 1, [(10, 17)]),
            ("three images of 60 x 60, three scales", (3, 1, 60, 60), 12, 3, [(30, 30), (22, 41), (45, 12)]),
            ("patches hanging over the border", (2, 1, 28, 28), 8, 2, [(2, 25), (27, 5)]),
            ("two channels, a 20 x 30 image", (2, 2, 20, 30), 4, 2, [(6, 12), (24, 4)]),
            ("the corners l = (-1, -1) and (1, 1)", (2, 1, 28, 28), 8, 2, [(0, 0), (28, 28)])):
        images = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
        cols, rows = [c for c, _ in centres], [r for _, r in centres]
        l = torch.tensor([[2 * c / W - 1, 2 * r / H - 1] for c, r in centres], dtype=torch.float64)
        read = partial(_crop_and_average, images, size, k)
        swapped_cols = [round((float(y) + 1) * W / 2) for y in l[:, 1]]
        swapped_rows = [round((float(x) + 1) * H / 2) for x in l[:, 0]]
        mistakes = {"x and y are swapped: l = (x, y) is (column, row), so l[:, 0] picks the column and l[:, 1] "
                    "the row (and a tensor is indexed [row, column])": read(swapped_cols, swapped_rows)}
        for (dc, dr), off in (((1, 1), "right and down"), ((-1, -1), "left and up"), ((1, 0), "right"),
                              ((-1, 0), "left"), ((0, 1), "down"), ((0, -1), "up")):
            mistakes[f"every patch sits one pixel {off} of where it should: an off-by-one in the centre's pixel index. "
                     f"The centre is at column (x + 1) W / 2, row (y + 1) H / 2, and a patch of side s starts "
                     f"s / 2 pixels before it"] = read([c + dc for c in cols], [r + dr for r in rows])
        if k > 1:
            mistakes["the coarser patches are subsampled (every 2^i-th pixel) instead of averaged over 2^i x 2^i "
                     "blocks"] = read(cols, rows, pool="subsample")
            mistakes["the coarser patches are max-pooled instead of averaged"] = read(cols, rows, pool="max")
            mistakes["the scales come in reverse order: patch 0 should be the sharpest, of side g"] = \
                read(cols, rows).flip(1)
        if C == k:
            mistakes["the scale and channel axes are swapped: the shape is (B, k, C, g, g)"] = \
                read(cols, rows).transpose(1, 2)
        mistakes["outside the image the patch repeats the border pixels instead of reading zeros"] = \
            read(cols, rows, padding="replicate")
        cases.append(Case(name, (images, l, size, k), mistakes=mistakes))
    return cases


def check_glimpse_sensor(student) -> None:
    """Grade ``student(images, l, glimpse_size, num_scales) -> rho``, the glimpse sensor of section A.

    ``images`` (B, C, H, W), ``l`` (B, 2) as (x, y) in [-1, 1], x across the columns and y down
    the rows. Returns (B, k, C, g, g): patch i spans g 2^i pixels around the centre
    ((x + 1) W / 2, (y + 1) H / 2), averaged over 2^i x 2^i blocks down to g x g, zeros
    outside the image. The locations put the centre on whole pixels, where cropping and
    averaging is exact, and the result is graded against
    :func:`attn_course.ram.glimpse_sensor` (which also reads between pixels).
    """
    what = "the glimpse sensor rho(x, l)"
    count = 0
    for case in _sensor_cases():  # one by one, so that the first case that goes wrong is the one named
        got, (images, _, size, k) = _attempt(student, case), case.args
        B, C = images.shape[:2]
        if C != k and isinstance(got, torch.Tensor) and tuple(got.shape) == (B, C, k, size, size):
            raise ExerciseFailed(f"{what} ({case.name}): the result has shape {(B, C, k, size, size)}, "
                                 "(B, C, k, g, g): the scale and channel axes are swapped; the sensor returns "
                                 "(B, k, C, g, g), one patch of C channels per scale")
        count += run_cases(student, glimpse_sensor, [case], what)
    report(what, count, ", borders, corners, several scales and channels included")


# --------------------------------------------------------------------------- the sensor inside RAM, trained


def _sensor_arguments(images, l, glimpse_size, num_scales):
    """RAM's call of the sensor, which is the exercise's: (images, l, glimpse_size, num_scales)."""
    return images, l, glimpse_size, num_scales


def train_with_glimpse_sensor(student, *, steps: int = 300, batch_size: int = 64,
                              config: RAMConfig = PAPER_CONFIGS["mnist28"], test_size: int = 1000, seed: int = 0,
                              share: float = 0.5, device: str = "cpu", progress: bool = False) -> None:
    """Train RAM with ``student(images, l, glimpse_size, num_scales) -> rho`` as its glimpse sensor, then the same
    with the course's, and compare their accuracies on ``test_size`` test digits of mnist28.

    The model is ``config`` (default: the paper's mnist28 model, six 8 x 8 glimpses), trained by
    the chapter's recipe (the hybrid loss (1.6), Adam) for ``steps`` steps of ``batch_size``
    digits, far from the 60,000 steps of the shipped model: the policy has barely started to
    learn, and the accuracy mostly shows that the glimpses carry the digit. It passes when the
    accuracy rises above its untrained value by at least ``share`` of the rise the course's
    sensor gives. A sensor that returns nothing of the image fails.
    """
    try_once(student, "the glimpse sensor rho(x, l)", _sensor_cases()[0].args)
    data = MNISTVariantTask("mnist28", device=device, test_size=test_size)
    setting = Setting(spec=RAM, task="mnist28", config=config, data=data,
                      measure=lambda model: 1.0 - error_rate(model, data)[0], steps=steps, batch_size=batch_size,
                      seed=seed, device=device, key=(test_size,))
    training_check(student, what="the glimpse sensor rho(x, l)",
                   model=f"RAM ({config.num_glimpses} glimpses of {config.glimpse_size} x {config.glimpse_size}, "
                         f"{config.num_scales} scale{'s' if config.num_scales > 1 else ''}) on mnist28",
                   module=ram, name="_glimpse_sensor", arguments=_sensor_arguments, setting=setting,
                   score=Score(f"accuracy on {test_size} test digits", True, percent=True), share=share,
                   progress=progress)
