"""Chapter 2's checkers: the reference passes, each typical mistake fails naming it, a stub says it is not written."""

import pytest
import torch

from attn_course.draw import filterbank, gaussian_kl, read
from attn_course.exercises import ExerciseFailed
from attn_course.exercises.draw import check_filterbank, check_gaussian_kl, check_read


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- the filterbank


def student_filterbank(offset=0.5, i_from=1, pixel_from=1, two=2.0, sigma_squared=True, normalise=-1,
                       swap=False, detach=False, eps=0.0):
    """A student's filterbank (2.7)-(2.8), written from scratch, with one knob per typical mistake."""
    def f(g_X, g_Y, delta, sigma2, N, A, B):
        i = torch.arange(i_from, i_from + N, dtype=g_X.dtype)
        variance = sigma2 if sigma_squared else sigma2 ** 2
        out = []
        for g, size in ((g_X, A), (g_Y, B)):
            mu = g[:, None] + (i - N / 2 - offset) * delta[:, None]
            pixels = torch.arange(pixel_from, pixel_from + size, dtype=g_X.dtype)
            F = torch.exp(-(pixels - mu[..., None]) ** 2 / (two * variance[:, None, None]))
            if normalise is not None:
                F = F / (F.sum(normalise, keepdim=True) + eps)
            out.append(F.detach() if detach else F)
        return (out[1], out[0]) if swap else tuple(out)
    return f


def test_a_correct_filterbank_passes(capsys):
    check_filterbank(student_filterbank())
    check_filterbank(filterbank)
    check_filterbank(student_filterbank(eps=1e-8))
    assert "\N{CHECK MARK} the filterbank (2.7)-(2.8)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (student_filterbank(offset=0.0), r"F_X \(.*\): .* what you get when the grid centres are g \+ \(i - N/2\)"),
    (student_filterbank(i_from=0), r"i runs from 0 to N - 1"),
    (student_filterbank(pixel_from=0), r"the pixels are counted from 0"),
    (student_filterbank(normalise=None), r"the rows are not normalised"),
    (student_filterbank(normalise=1), r"normalised over the grid points"),
    (student_filterbank(sigma_squared=False), r"sigma2 is used as sigma"),
    (student_filterbank(two=1.0), r"the 2 of 2 sigma\^2 is missing"),
    (student_filterbank(swap=True), r"F_X and F_Y are swapped"),
    (student_filterbank(detach=True), r"carries no gradient"),
], ids=["off-by-one centre", "i from 0", "pixels from 0", "not normalised", "normalised over the grid",
        "sigma2 as sigma", "2 missing", "swapped", "detached"])
def test_each_filterbank_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_filterbank(wrong)


def test_a_filterbank_with_A_and_B_mixed_up_is_named_on_a_square_image_too():
    """F_X built from g_Y on a square image has the right shape: the values name the swap."""
    def mixed(g_X, g_Y, delta, sigma2, N, A, B):
        F_X, F_Y = filterbank(g_X, g_Y, delta, sigma2, N, A, B)
        return (F_Y, F_X) if A == B else (F_X, F_Y)
    with pytest.raises(ExerciseFailed, match=r"F_X \(grids hanging .*\): .* F_X and F_Y are swapped"):
        check_filterbank(mixed)


def test_a_filterbank_that_returns_one_matrix_says_so():
    with pytest.raises(ExerciseFailed, match=r"expected a tuple \(F_X, F_Y\) of two tensors, got Tensor"):
        check_filterbank(lambda *args: filterbank(*args)[0])


def test_the_filterbank_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_filterbank(stub)


# --------------------------------------------------------------------------- the read


def student_read(gamma_power=1, transposed_patch=False, order=(0, 1), second_image="x_hat", roles_swapped=False,
                 untransposed=False):
    def f(x, x_hat, F_X, F_Y, gamma):
        images = {"x": x, "x_hat": x_hat}
        both = torch.stack([x, images[second_image]], 1)[:, list(order)]
        left, right = (F_X, F_Y) if roles_swapped else (F_Y, F_X)
        right = right[:, None] if untransposed else right[:, None].transpose(-1, -2)
        patches = left[:, None] @ both @ right
        if transposed_patch:
            patches = patches.transpose(-1, -2)
        return gamma[:, None, None, None] ** gamma_power * patches
    return f


def test_a_correct_read_passes(capsys):
    check_read(student_read())
    check_read(read)
    assert "\N{CHECK MARK} the read (2.10)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (student_read(gamma_power=0), r"gamma is forgotten"),
    (student_read(gamma_power=-1), r"the patches are divided by gamma"),
    (student_read(transposed_patch=True), r"the patches are transposed"),
    (student_read(order=(1, 0)), r"the two patches are in the wrong order"),
    (student_read(second_image="x"), r"the error image x\^ is not read"),
], ids=["gamma forgotten", "gamma divides", "patch transposed", "order", "x_hat missing"])
def test_each_read_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_read(wrong)


@pytest.mark.parametrize("wrong, message", [
    (student_read(roles_swapped=True), r"F_X and F_Y swap roles"),
    (student_read(untransposed=True), r"F_X is not transposed"),
], ids=["roles swapped", "untransposed"])
def test_a_swapped_or_untransposed_filter_is_named_on_square_images(wrong, message):
    with pytest.raises(ExerciseFailed, match=r"\(N = A = B = 6: square images.*\): .*" + message):
        check_read(wrong)


def test_the_read_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_read(stub)


# --------------------------------------------------------------------------- the KL term


def test_a_correct_kl_passes(capsys):
    check_gaussian_kl(lambda mu, log_sigma: 0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1))
    check_gaussian_kl(gaussian_kl)
    assert "\N{CHECK MARK} the KL term (2.2)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda mu, ls: mu ** 2 + torch.exp(2 * ls) - 2 * ls - 1, r"the 1/2 of \(2.2\) is forgotten"),
    (lambda mu, ls: 0.5 * (mu ** 2 + torch.exp(ls) - ls - 1), r"log_sigma is used as the log variance"),
    (lambda mu, ls: 0.5 * (mu ** 2 + torch.exp(2 * ls) - 2 * ls), r"the constant -1/2 per dimension is forgotten"),
    (lambda mu, ls: 0.5 * (mu ** 2 + torch.exp(ls) - 2 * ls - 1), r"sigma is used where \(2.2\) has sigma\^2"),
    (lambda mu, ls: 0.5 * (mu ** 2 + torch.exp(2 * ls) + 2 * ls - 1), r"log sigma\^2 has the wrong sign"),
    (lambda mu, ls: 0.5 * (mu + torch.exp(2 * ls) - 2 * ls - 1), r"the mean enters as mu, not mu\^2"),
    (lambda mu, ls: (0.5 * (mu ** 2 + torch.exp(2 * ls) - 2 * ls - 1)).sum(-1), r"without summing"),
    (lambda mu, ls: (0.5 * (mu ** 2 + torch.exp(2 * ls) - 2 * ls - 1)).detach(), r"carries no gradient"),
], ids=["half", "log variance", "constant", "sigma for sigma^2", "sign", "mu", "summed", "detached"])
def test_each_kl_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_gaussian_kl(wrong)


def test_the_kl_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_gaussian_kl(stub)
