"""Chapter 2's implement-it exercises (Gregor et al. 2015, DRAW): checkers for the filterbank, the read and the KL term.

Each checker grades the student's function against the function of :mod:`attn_course.draw`
that the model trains with: :func:`~attn_course.draw.filterbank` (2.7)-(2.8),
:func:`~attn_course.draw.read` (2.10) and :func:`~attn_course.draw.gaussian_kl` (2.2), the
per-dimension term of L^z in (2.5). :func:`train_with_filterbank` plugs the student's filterbank into
DRAW's read and write and trains the model for a short run (see :mod:`attn_course.exercises.training`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import draw
from ..data.binarized import BinarizedMNIST
from ..draw import QUICK_CONFIG, DRAWConfig, filterbank, gaussian_kl, read
from ..experiments.draw import DRAW_SPEC, evaluate_bound
from . import Case, ExerciseFailed, call_student, compare, report, run_cases
from .training import Score, Setting, training_check, try_once


# --------------------------------------------------------------------------- the filterbank (2.7)-(2.8)


def _unnormalised(g_X, g_Y, delta, sigma2, N, A, B):
    """(2.8) without the 1/Z: the raw Gaussians."""
    i = torch.arange(1, N + 1, dtype=g_X.dtype)
    rows = []
    for g, size in ((g_X, A), (g_Y, B)):
        mu = g[:, None] + (i - N / 2 - 0.5) * delta[:, None]
        pixels = torch.arange(1, size + 1, dtype=g_X.dtype)
        rows.append(torch.exp(-(pixels - mu[..., None]) ** 2 / (2 * sigma2[:, None, None])))
    return tuple(rows)


def _filterbank_mistakes(g_X, g_Y, delta, sigma2, N, A, B) -> tuple[dict, dict]:
    """The typical wrong F_X and F_Y for one window: (mistakes of F_X, mistakes of F_Y)."""
    raw_X, raw_Y = _unnormalised(g_X, g_Y, delta, sigma2, N, A, B)
    wrong = {
        "the grid centres are g + (i - N/2) delta: (2.7) has (i - N/2 - 0.5), which makes the offsets run "
        "symmetrically from -(N-1)/2 to (N-1)/2 strides":
            filterbank(g_X + 0.5 * delta, g_Y + 0.5 * delta, delta, sigma2, N, A, B),
        "i runs from 0 to N - 1: in (2.7) it runs from 1 to N":
            filterbank(g_X - delta, g_Y - delta, delta, sigma2, N, A, B),
        "the pixels are counted from 0 (a = 0..A-1): the chapter counts them from 1, a = 1..A and b = 1..B":
            filterbank(g_X + 1, g_Y + 1, delta, sigma2, N, A, B),
        "sigma2 is used as sigma: the exponent of (2.8) divides by 2 sigma^2, and sigma2 already is sigma^2":
            filterbank(g_X, g_Y, delta, sigma2 ** 2, N, A, B),
        "the 2 of 2 sigma^2 is missing from the exponent of (2.8)":
            filterbank(g_X, g_Y, delta, sigma2 / 2, N, A, B),
        "the rows are not normalised: divide each row by its sum (Z_X, Z_Y of (2.8)) so that it sums to 1":
            (raw_X, raw_Y),
    }
    F_X, F_Y = filterbank(g_X, g_Y, delta, sigma2, N, A, B)
    mistakes_X = {mistake: values[0] for mistake, values in wrong.items()}
    mistakes_Y = {mistake: values[1] for mistake, values in wrong.items()}
    mistakes_X["F_X and F_Y are swapped (or F_X is built from g_Y): F_X has one row per grid column, "
               "a Gaussian over the A pixel columns around mu_X^i"] = F_Y
    mistakes_Y["F_X and F_Y are swapped (or F_Y is built from g_X): F_Y has one row per grid row, "
               "a Gaussian over the B pixel rows around mu_Y^j"] = F_X
    over_the_grid = "the rows are normalised over the grid points (dim 1) instead of over the pixels (the last dim)"
    mistakes_X[over_the_grid] = raw_X / raw_X.sum(1, keepdim=True)
    mistakes_Y[over_the_grid] = raw_Y / raw_Y.sum(1, keepdim=True)
    return mistakes_X, mistakes_Y


def _window_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    f64 = torch.float64

    def t(*values):
        return torch.tensor(values, dtype=f64)

    random_batch = tuple(torch.rand(3, generator=g, dtype=f64) * scale + low
                         for scale, low in ((4, 3), (8, 3), (2.5, 0.5), (2.7, 0.3)))
    windows = [
        ("two windows on a 28 x 20 image (A = 28 columns, B = 20 rows), N = 5",
         (t(14.5, 6.0), t(10.5, 15.0), t(3.0, 1.5), t(1.0, 0.5), 5, 28, 20)),
        ("N = 2, a wide grid and a wide blur on a 12 x 16 image", (t(6.5), t(8.5), t(5.0), t(4.0), 2, 12, 16)),
        ("grids hanging over the image's edges (the cut-off rows need their own Z)",
         (t(2.0, 26.0), t(27.0, 1.5), t(2.0, 1.0), t(2.0, 0.7), 4, 28, 28)),
        ("N = A = B = 6, g = (A + 1)/2, delta = 1, sigma^2 = 0.01: the grid on the pixel centres, F = I",
         (t(3.5), t(3.5), t(1.0), t(0.01), 6, 6, 6)),
        ("a batch of three random windows, N = 3, on a 10 x 14 image", (*random_batch, 3, 10, 14)),
    ]
    return [Case(name, args) for name, args in windows]


def check_filterbank(student) -> None:
    """Grade ``student(g_X, g_Y, delta, sigma2, N, A, B) -> (F_X, F_Y)``: equations (2.7)-(2.8).

    ``g_X``, ``g_Y``, ``delta``, ``sigma2`` have shape (batch,); pixels are counted from 1.
    ``F_X`` is (batch, N, A) and ``F_Y`` is (batch, N, B), every row a Gaussian normalised to
    sum 1. Checked on five cases (non-square images, grids over the edge, the identity),
    then the gradients with respect to g_X, g_Y, delta and sigma2.
    """
    what = "the filterbank (2.7)-(2.8)"
    cases = _window_cases()
    for case in cases:
        got = call_student(student, case.args, what, case.name)
        F_X, F_Y = filterbank(*case.args)
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(v, torch.Tensor) for v in got):
            raise ExerciseFailed(f"{what} ({case.name}): expected a tuple (F_X, F_Y) of two tensors, got "
                                 f"{type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (tuple, list))
                                                            else ""))
        A, B = case.args[5], case.args[6]
        if A != B and got[0].shape == F_Y.shape and got[1].shape == F_X.shape:
            raise ExerciseFailed(f"{what} ({case.name}): F_X has shape {tuple(got[0].shape)} and F_Y "
                                 f"{tuple(got[1].shape)}: F_X and F_Y are swapped, or A and B are. F_X is "
                                 f"(batch, N, A) = {tuple(F_X.shape)}, a Gaussian over the A = {A} pixel columns "
                                 f"per grid column; F_Y is (batch, N, B) = {tuple(F_Y.shape)}, over the B = {B} rows")
        mistakes_X, mistakes_Y = _filterbank_mistakes(*case.args)
        compare(got[0], F_X, f"{what}: F_X", Case(case.name, case.args, mistakes=mistakes_X))
        compare(got[1], F_Y, f"{what}: F_Y", Case(case.name, case.args, mistakes=mistakes_Y))
    # the values agree; now the gradients, of F_X and F_Y side by side, with respect to g_X, g_Y, delta, sigma2
    run_cases(lambda *args: torch.cat(tuple(student(*args)), -1), lambda *args: torch.cat(filterbank(*args), -1),
              cases, f"{what}, [F_X, F_Y] side by side", gradient_of=(0, 1, 2, 3))
    report(what, len(cases), ", gradients with respect to g_X, g_Y, delta and sigma2 included")


# --------------------------------------------------------------------------- the read (2.10)


def _read_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    f64 = torch.float64
    cases = []
    for name, batch, N, A, B in (("N = A = B = 6: square images, where a swapped filter still fits", 3, 6, 6, 6),
                                 ("a batch of 2 images of 28 x 20 (A = 28 columns, B = 20 rows), N = 3", 2, 3, 28, 20),
                                 ("one 12 x 16 image, N = 2", 1, 2, 12, 16)):
        g_X = torch.rand(batch, generator=g, dtype=f64) * (A - 4) + 2.5
        g_Y = torch.rand(batch, generator=g, dtype=f64) * (B - 4) + 2.5
        delta = torch.rand(batch, generator=g, dtype=f64) * 2 + 0.6
        sigma2 = torch.rand(batch, generator=g, dtype=f64) * 2 + 0.4
        F_X, F_Y = filterbank(g_X, g_Y, delta, sigma2, N, A, B)
        x = torch.rand(batch, B, A, generator=g, dtype=f64)
        x_hat = x - torch.sigmoid(torch.randn(batch, B, A, generator=g, dtype=f64))
        gamma = torch.rand(batch, generator=g, dtype=f64) * 2 + 0.3
        gamma4 = gamma[:, None, None, None]
        both = torch.stack([x, x_hat], 1)
        patches = F_Y[:, None] @ both @ F_X[:, None].transpose(-1, -2)
        mistakes = {
            "gamma is forgotten: (2.10) scales both patches by the intensity gamma": patches,
            "the patches are divided by gamma: that is the write (2.11), the read multiplies": patches / gamma4,
            "the patches are transposed (F_X x^T F_Y^T): the patch's rows come from F_Y, its columns from F_X":
                patches.transpose(-1, -2) * gamma4,
            "the two patches are in the wrong order: (2.10) stacks [F_Y x F_X^T, F_Y x^ F_X^T], x first":
                patches.flip(1) * gamma4,
            "the error image x^ is not read: the second patch is F_Y x^ F_X^T":
                (F_Y[:, None] @ torch.stack([x, x], 1) @ F_X[:, None].transpose(-1, -2)) * gamma4,
        }
        if A == B == N:
            mistakes["F_X and F_Y swap roles (F_X x F_Y^T): F_Y, over the B rows, multiplies from the left"] = \
                F_X[:, None] @ both @ F_Y[:, None].transpose(-1, -2) * gamma4
            mistakes["F_X is not transposed (F_Y x F_X): the columns of the patch need F_X^T on the right"] = \
                F_Y[:, None] @ both @ F_X[:, None] * gamma4
        cases.append(Case(name, (x, x_hat, F_X, F_Y, gamma), mistakes=mistakes))
    return cases


def check_read(student) -> None:
    """Grade ``student(x, x_hat, F_X, F_Y, gamma) -> patches``: equation (2.10), gamma [F_Y x F_X^T, F_Y x^ F_X^T].

    ``x``, ``x_hat`` (batch, B, A); ``F_X`` (batch, N, A); ``F_Y`` (batch, N, B); ``gamma``
    (batch,). Returns (batch, 2, N, N), the patch of x then the patch of x^. Checked on
    three cases (first square images, where a swapped or untransposed filter still fits
    and can be named), then the gradients with respect to all five arguments.
    """
    what = "the read (2.10)"
    count = run_cases(student, read, _read_cases(), what, gradient_of=(0, 1, 2, 3, 4))
    report(what, count, ", gradients with respect to x, x^, F_X, F_Y and gamma included")


# --------------------------------------------------------------------------- the KL term (2.2), summed into L^z (2.5)


def _kl_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    f64 = torch.float64
    inputs = [
        ("four dimensions", torch.tensor([0.0, 1.2, -0.8, 0.3], dtype=f64),
         torch.tensor([0.0, -0.7, 0.4, -1.5], dtype=f64)),
        ("(T, batch, z_size) = (3, 2, 5), as DRAW's forward returns them", torch.randn(3, 2, 5, generator=g, dtype=f64),
         torch.randn(3, 2, 5, generator=g, dtype=f64) * 0.8),
        ("Q equal to the prior, mu = 0 and log sigma = 0: KL = 0", torch.zeros(2, 3, dtype=f64),
         torch.zeros(2, 3, dtype=f64)),
        ("very wide and very narrow Gaussians, log sigma from -4 to 3", torch.linspace(-2, 2, 8, dtype=f64),
         torch.linspace(-4, 3, 8, dtype=f64)),
    ]
    cases = []
    for name, mu, log_sigma in inputs:
        kl = gaussian_kl(mu, log_sigma)
        sigma2 = torch.exp(2 * log_sigma)
        mistakes = {
            "the 1/2 of (2.2) is forgotten": 2 * kl,
            "log_sigma is used as the log variance: it is log sigma, so sigma^2 = exp(2 log_sigma) and "
            "log sigma^2 = 2 log_sigma": 0.5 * (mu ** 2 + torch.exp(log_sigma) - log_sigma - 1),
            "sigma is used where (2.2) has sigma^2 (sigma^2 = exp(2 log_sigma))":
                0.5 * (mu ** 2 + torch.exp(log_sigma) - 2 * log_sigma - 1),
            "the constant -1/2 per dimension is forgotten (it adds up to the -T/2 of (2.5))": kl + 0.5,
            "log sigma^2 has the wrong sign: (2.2) subtracts it": 0.5 * (mu ** 2 + sigma2 + 2 * log_sigma - 1),
            "the mean enters as mu, not mu^2": 0.5 * (mu + sigma2 - 2 * log_sigma - 1),
        }
        cases.append(Case(name, (mu, log_sigma), mistakes=mistakes))
    return cases


def check_gaussian_kl(student) -> None:
    """Grade ``student(mu, log_sigma) -> KL``: equation (2.2), KL(N(mu, sigma^2) || N(0, 1)) per dimension.

    Elementwise: ``mu`` and ``log_sigma`` of any one shape, the result of that shape; L^z of
    (2.5) is its sum over the steps and the latent dimensions (``negative_elbo`` sums it).
    Checked on four cases, then the gradients with respect to mu and log_sigma.
    """
    what = "the KL term (2.2)"
    cases = _kl_cases()
    probe = cases[1]
    got = call_student(student, probe.args, what, probe.name)
    expected = gaussian_kl(*probe.args)
    if isinstance(got, torch.Tensor) and got.shape != expected.shape and got.numel() < expected.numel():
        raise ExerciseFailed(f"{what} ({probe.name}): expected shape {tuple(expected.shape)}, the shape of mu, got "
                             f"{tuple(got.shape)}: return the KL of every dimension, elementwise, without summing "
                             "(negative_elbo sums it over t and the latent dimensions into L^z)")
    count = run_cases(student, gaussian_kl, cases, what, gradient_of=(0, 1))
    report(what, count, ", gradients with respect to mu and log_sigma included")


# --------------------------------------------------------------------------- the filterbank inside DRAW, trained


# DRAW small enough for a short run in a notebook: 4 steps, LSTMs of 64, z of 20 (the chapter's quick run has
# T = 8 and LSTMs of 128; the shipped model T = 16 and LSTMs of 256).
SHORT_CONFIG = replace(QUICK_CONFIG, T=4, enc_size=64, dec_size=64)


def _filterbank_arguments(g_X, g_Y, delta, sigma2, N, A, B, eps=1e-8):
    """DRAW's call of the filterbank as the exercise's: (g_X, g_Y, delta, sigma2, N, A, B)."""
    return g_X, g_Y, delta, sigma2, N, A, B


def train_with_filterbank(student, *, steps: int = 300, batch_size: int = 32, config: DRAWConfig = SHORT_CONFIG,
                          test_size: int = 500, seed: int = 0, share: float = 0.75, device: str = "cpu",
                          progress: bool = False) -> None:
    """Train DRAW with ``student(g_X, g_Y, delta, sigma2, N, A, B) -> (F_X, F_Y)`` as the filterbank of every read
    and write, then the same with the course's (2.7)-(2.8), and compare their test bounds.

    The model is ``config`` (default :data:`SHORT_CONFIG`), trained by the chapter's recipe
    for ``steps`` steps of ``batch_size`` binarised MNIST digits; the score is the negative
    log-likelihood bound L^x + L^z (2.5) on the first ``test_size`` test digits, in nats. It
    passes when the bound falls by at least ``share`` of the fall the course's filterbank
    gives. A filterbank through which no gradient reaches the window, or that reads and
    writes nothing, fails: the model then cannot learn where to look or what to draw.
    """
    try_once(student, "the filterbank (2.7)-(2.8)", _window_cases()[0].args)
    data = BinarizedMNIST(device=device, test_size=test_size)
    setting = Setting(spec=DRAW_SPEC, task="mnist", config=config, data=data,
                      measure=lambda model: evaluate_bound(model, data)["nll_bound"], steps=steps,
                      batch_size=batch_size, seed=seed, device=device, key=(test_size,))
    training_check(student, what="the filterbank (2.7)-(2.8)",
                   model=f"DRAW (T = {config.T}, read {config.read_N} x {config.read_N}, write "
                         f"{config.write_N} x {config.write_N}, LSTMs of {config.enc_size})",
                   module=draw, name="_filterbank", arguments=_filterbank_arguments, setting=setting,
                   score=Score(f"bound on {test_size} test digits", False, unit="nats"), share=share,
                   progress=progress)
