"""Chapter 1's checkers: the reference passes, each typical mistake fails naming itself, a stub says "not
implemented yet"; and the checker's REINFORCE reference is the term of hybrid_loss itself."""

import math

import pytest
import torch
import torch.nn.functional as F

from attn_course.exercises import ExerciseFailed
from attn_course.exercises.ram import (check_gaussian_log_likelihood, check_glimpse_sensor, check_reinforce_term,
                                       reinforce_term)
from attn_course.ram import (PAPER_CONFIGS, RecurrentAttentionModel, gaussian_log_likelihood, glimpse_sensor,
                             glimpse_sensor_loop, hybrid_loss)


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- the REINFORCE term of (1.6)


def test_the_reference_is_the_reinforce_term_of_hybrid_loss():
    """hybrid_loss = classification + REINFORCE + baseline regression: take the other two away."""
    torch.manual_seed(0)
    model = RecurrentAttentionModel(PAPER_CONFIGS["mnist28"])
    images, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    out = model(images, generator=torch.Generator().manual_seed(1))
    loss, _ = hybrid_loss(out, labels)
    R = (out["log_probs"].argmax(-1) == labels).float()
    others = F.nll_loss(out["log_probs"], labels) + F.mse_loss(out["baselines"], R[:, None].expand(-1, 6))
    term = reinforce_term(out["log_pi"], R, out["baselines"][:, :-1])  # b_1, ..., b_{T-1}
    assert torch.allclose(loss - others, term, atol=1e-6)
    assert not torch.allclose(term, reinforce_term(out["log_pi"], R, out["baselines"][:, 1:]))


def written_out(log_pi, R, b):
    total = 0
    for i in range(log_pi.shape[0]):
        total = total - (log_pi[i] * (R[i] - b[i].detach())).sum()
    return total / log_pi.shape[0]


def no_baseline(log_pi, R, b):
    return -(log_pi * R[:, None]).sum(1).mean()


def not_detached(log_pi, R, b):
    return -(log_pi * (R[:, None] - b)).sum(1).mean()


def wrong_sign(log_pi, R, b):
    return (log_pi * (R[:, None] - b).detach()).sum(1).mean()


def mean_over_time(log_pi, R, b):
    return -(log_pi * (R[:, None] - b).detach()).mean(1).mean()


def summed_over_the_batch(log_pi, R, b):
    return -(log_pi * (R[:, None] - b).detach()).sum()


def broadcast_the_wrong_way(log_pi, R, b):
    return -(log_pi * (R - b).detach()).sum(1).mean()


def per_image(log_pi, R, b):
    return -(log_pi * (R[:, None] - b).detach()).sum(1)


def log_pi_detached(log_pi, R, b):
    return -(log_pi.detach() * (R[:, None] - b).detach()).sum(1).mean()


def test_the_reference_and_a_loop_pass(capsys):
    check_reinforce_term(reinforce_term)
    check_reinforce_term(written_out)
    assert capsys.readouterr().out.count("\N{CHECK MARK}") == 2


@pytest.mark.parametrize("wrong, message", [
    (no_baseline, "the baseline is not subtracted"),
    (not_detached, "the value is right, but R - b is not detached: the gradient with respect to b"),
    (wrong_sign, "the sign is flipped"),
    (mean_over_time, "averaged over the T - 1 steps"),
    (summed_over_the_batch, "the batch is summed instead of averaged"),
    (broadcast_the_wrong_way, "R is lined up with the steps instead of the images"),
    (per_image, r"one value per image, shape \(B,\)"),
    (log_pi_detached, "the result carries no gradient with respect to log_pi"),
])
def test_each_typical_reinforce_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_reinforce_term(wrong)


def test_the_reinforce_checker_leaves_the_global_seed_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_reinforce_term(reinforce_term)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- the Gaussian policy (1.5)


def with_torch_distributions(l, mu, std):
    return torch.distributions.Normal(mu, std).log_prob(l).sum(-1)


def no_log_std(l, mu, std):
    return (-0.5 * ((l - mu) / std) ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def no_two_pi(l, mu, std):
    return (-0.5 * ((l - mu) / std) ** 2 - math.log(std)).sum(-1)


def variance_in_the_square(l, mu, std):
    return (-0.5 * ((l - mu) / std ** 2) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def log_variance(l, mu, std):
    return (-0.5 * ((l - mu) / std) ** 2 - math.log(std ** 2) - 0.5 * math.log(2 * math.pi)).sum(-1)


def std_where_the_variance_goes(l, mu, std):
    return (-0.5 * (l - mu) ** 2 / std - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def not_summed(l, mu, std):
    return -0.5 * ((l - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def averaged(l, mu, std):
    return (-0.5 * ((l - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).mean(-1)


def mu_detached(l, mu, std):
    return gaussian_log_likelihood(l, mu.detach(), std)


def test_the_reference_and_torch_distributions_pass(capsys):
    check_gaussian_log_likelihood(gaussian_log_likelihood)
    check_gaussian_log_likelihood(with_torch_distributions)
    assert capsys.readouterr().out.count("\N{CHECK MARK}") == 2


@pytest.mark.parametrize("wrong, message", [
    (no_log_std, r"the -log\(sigma\) term is missing"),
    (no_two_pi, "the 2 pi constant is missing"),
    (variance_in_the_square, "sigma\\^2 stands where sigma goes in the square"),
    (log_variance, r"log\(sigma\^2\) stands where log\(sigma\) goes"),
    (std_where_the_variance_goes, "divided by 2 sigma instead of 2 sigma\\^2"),
    (not_summed, "one log-density per coordinate: the two coordinates are not summed"),
    (averaged, "the two coordinates are averaged instead of summed"),
    (mu_detached, "the result carries no gradient"),
])
def test_each_typical_gaussian_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_gaussian_log_likelihood(wrong)


# --------------------------------------------------------------------------- the glimpse sensor


def crop_and_average(images, l, glimpse_size, num_scales, swap=False, shift=0, subsample=False,
                     padding="constant"):
    B, C, H, W = images.shape
    g = glimpse_size
    out = images.new_zeros(B, num_scales, C, g, g)
    for b in range(B):
        x, y = (l[b, 1], l[b, 0]) if swap else (l[b, 0], l[b, 1])
        cx, cy = (float(x) + 1) * W / 2, (float(y) + 1) * H / 2
        for i in range(num_scales):
            side = g * 2 ** i
            padded = F.pad(images[b][None], (side, side, side, side), mode=padding)[0]
            x0 = round(cx - side / 2) + side + shift
            y0 = round(cy - side / 2) + side + shift
            crop = padded[:, y0:y0 + side, x0:x0 + side]
            out[b, i] = crop[:, ::2 ** i, ::2 ** i] if subsample else F.avg_pool2d(crop[None], 2 ** i)[0]
    return out


def test_the_reference_and_the_loop_pass(capsys):
    check_glimpse_sensor(glimpse_sensor)
    check_glimpse_sensor(glimpse_sensor_loop)
    check_glimpse_sensor(crop_and_average)
    assert capsys.readouterr().out.count("\N{CHECK MARK}") == 3


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: crop_and_average(*a, swap=True), "x and y are swapped"),
    (lambda *a: crop_and_average(*a, shift=1), "one pixel right and down of where it should: an off-by-one"),
    (lambda *a: crop_and_average(*a, shift=-1), "one pixel left and up of where it should: an off-by-one"),
    (lambda *a: crop_and_average(*a).flip(1), "the scales come in reverse order"),
    (lambda *a: crop_and_average(*a).transpose(1, 2), "the scale and channel axes are swapped"),
    (lambda *a: crop_and_average(*a, subsample=True), "subsampled \\(every 2\\^i-th pixel\\) instead of averaged"),
    (lambda *a: crop_and_average(*a, padding="replicate"), "repeats the border pixels instead of reading zeros"),
])
def test_each_typical_sensor_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_glimpse_sensor(wrong)


@pytest.mark.parametrize("check", [check_reinforce_term, check_gaussian_log_likelihood, check_glimpse_sensor])
def test_a_stub_is_not_implemented_yet(check):
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check(stub)
