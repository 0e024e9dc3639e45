"""Chapter 0's checkers: the reference passes, each typical mistake fails naming itself, a stub says "not
implemented yet"."""

import pytest
import torch

from attn_course.attention import hard_attention_sample, soft_attention
from attn_course.exercises import ExerciseFailed
from attn_course.exercises.attention import check_expected_hard_read, check_soft_attention


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- soft attention (0.2)


def written_out(scores, values, mask=None):
    """A student's correct answer, written out: the row maximum subtracted, exp, normalised, summed."""
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)
    weights = (scores - scores.max(-1, keepdim=True).values).exp()
    alpha = weights / weights.sum(-1, keepdim=True)
    return (alpha[..., None] * values).sum(-2), alpha


def softmax_over_axis_0(scores, values, mask=None):
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    alpha = torch.softmax(scores, 0)
    return (alpha[..., None] * values).sum(-2), alpha


def not_normalised(scores, values, mask=None):
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    alpha = scores.exp()
    return (alpha[..., None] * values).sum(-2), alpha


def mask_ignored(scores, values, mask=None):
    alpha = torch.softmax(scores, -1)
    return (alpha[..., None] * values).sum(-2), alpha


def mask_inverted(scores, values, mask=None):
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    alpha = torch.softmax(scores, -1)
    return (alpha[..., None] * values).sum(-2), alpha


def zeroed_after_softmax(scores, values, mask=None):
    alpha = torch.softmax(scores, -1)
    if mask is not None:
        alpha = alpha * mask
    return (alpha[..., None] * values).sum(-2), alpha


def summed_over_features(scores, values, mask=None):
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    alpha = torch.softmax(scores, -1)
    return (alpha[..., None] * values).sum(-1), alpha


def alpha_first(scores, values, mask=None):
    return tuple(reversed(soft_attention(scores, values, mask)))


def overflowing(scores, values, mask=None):
    weights = scores.exp() if mask is None else scores.exp() * mask
    alpha = weights / weights.sum(-1, keepdim=True)
    return (alpha[..., None] * values).sum(-2), alpha


def detached(scores, values, mask=None):
    z, alpha = soft_attention(scores.detach(), values, mask)
    return z, alpha


def test_the_reference_and_a_written_out_softmax_pass(capsys):
    check_soft_attention(soft_attention)
    check_soft_attention(written_out)
    assert capsys.readouterr().out.count("\N{CHECK MARK}") == 2


@pytest.mark.parametrize("wrong, message", [
    (softmax_over_axis_0, "the softmax runs over axis 0 instead of the positions"),
    (not_normalised, r"without dividing by their sum \(no normalisation\)"),
    (mask_ignored, "the mask is ignored"),
    (mask_inverted, "the mask is applied the wrong way round"),
    (zeroed_after_softmax, "set to 0 after the softmax, without renormalising"),
    (summed_over_features, "the weighted sum runs over the feature axis of the values instead of the positions"),
    (alpha_first, r"returns \(alpha, z\)"),
    (overflowing, "exp\\(e_i\\) overflows"),
    (detached, "no gradient reaches the scores: are they detached"),
])
def test_each_typical_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_soft_attention(wrong)


def test_a_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_soft_attention(stub)


# --------------------------------------------------------------------------- soft = E[hard] (0.4)


def enumerated(scores, values):
    """The expected hard read, position by position: sum_i P(s = i) v_i."""
    p = torch.softmax(scores, -1)
    return sum(p[:, i, None] * values[:, i] for i in range(scores.shape[1]))


def raw_scores(scores, values):
    return (scores[..., None] * values).sum(1)


def uniform(scores, values):
    return values.mean(1)


def argmax_position(scores, values):
    return values[torch.arange(len(scores)), scores.argmax(-1)]


def sampled(scores, values):
    reads, _ = hard_attention_sample(scores, values, 20_000)
    return reads.mean(0)


def sampled_with_a_seed(scores, values):
    reads, _ = hard_attention_sample(scores, values, 20_000, generator=torch.Generator().manual_seed(0))
    return reads.mean(0)


def test_enumerating_the_positions_passes_and_says_it_equals_the_soft_context(capsys):
    check_expected_hard_read(enumerated)
    out = capsys.readouterr().out
    assert "\N{CHECK MARK}" in out and "equals the soft context z" in out and "(0.4)" in out


@pytest.mark.parametrize("wrong, message", [
    (raw_scores, r"the raw scores e_i are used as the probabilities"),
    (uniform, "the values are averaged uniformly"),
    (argmax_position, "only the most likely position is read"),
    (sampled, "a different answer each time it is called: it samples positions"),
    (sampled_with_a_seed, "close to the expected read but not equal to it: if you averaged sampled reads"),
])
def test_each_typical_mistake_of_the_expectation_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_expected_hard_read(wrong)


def test_the_expectation_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_expected_hard_read(stub)
