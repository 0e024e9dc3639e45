"""Chapter 3's checkers: the reference passes, each typical mistake fails naming it, a stub says it is not written."""

import pytest
import torch

from attn_course.decoding import soft_context
from attn_course.exercises import ExerciseFailed
from attn_course.exercises.show_attend_tell import (check_doubly_stochastic_penalty, check_hard_attention_loss,
                                                    check_soft_context, check_update_baseline,
                                                    reference_hard_attention_loss, reference_update_baseline)
from attn_course.show_attend_tell import SATConfig, ShowAttendTell, doubly_stochastic_penalty, hard_loss


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- the soft context


def context(a, alpha, beta=None):
    z = (alpha[:, :, None] * a).sum(1)  # sum_i alpha_ti a_i
    return z if beta is None else beta * z


def test_a_correct_soft_context_passes(capsys):
    check_soft_context(context)
    check_soft_context(soft_context)
    assert "\N{CHECK MARK} the soft context (3.13)-(3.14)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda a, alpha, beta=None: context(a, alpha), r"beta is forgotten"),
    (lambda a, alpha, beta=None: context(a, torch.softmax(alpha, -1), beta), r"passed through a softmax again"),
    (lambda a, alpha, beta=None: context(a, alpha) * (1 if beta is None else beta[:, 0]),
     r"beta multiplies along the wrong axis"),
    (lambda a, alpha, beta=None: (alpha[..., None] * a).sum(-1) * (1 if beta is None else beta),
     r"the sum runs over the features instead of the regions"),
    (lambda a, alpha, beta=None: (a @ alpha[..., None])[..., 0] * (1 if beta is None else beta),
     r"a is not transposed"),
    (lambda a, alpha, beta=None: context(a, alpha, beta).detach(), r"carries no gradient"),
], ids=["beta forgotten", "softmax again", "beta axis", "wrong axis", "a untransposed", "detached"])
def test_each_soft_context_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_soft_context(wrong)


def test_a_soft_context_that_cannot_do_without_the_gate_says_which_case():
    with pytest.raises(ExerciseFailed, match=r"no gate \(beta = None.*\): your function raised TypeError"):
        check_soft_context(lambda a, alpha, beta: beta * context(a, alpha))


def test_the_soft_context_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_soft_context(stub)


# --------------------------------------------------------------------------- the doubly stochastic penalty


def penalty(alpha, mask, lambda_, masked=True, square=2, swapped=False, reduce="sum"):
    weights = alpha * mask[..., None] if masked else alpha
    if swapped:  # masked: the padding steps are left out; not: they each add (1 - 0)^2
        per_step = (1 - (alpha * mask[..., None]).sum(-1)) ** square
        return lambda_ * ((per_step * mask) if masked else per_step).sum(-1)
    per_region = (1 - weights.sum(1)) ** square
    return lambda_ * (per_region.sum(-1) if reduce == "sum" else per_region.mean(-1) if reduce == "mean"
                      else per_region.sum())


def test_a_correct_penalty_passes(capsys):
    check_doubly_stochastic_penalty(penalty)
    check_doubly_stochastic_penalty(doubly_stochastic_penalty)
    assert "\N{CHECK MARK} the doubly stochastic penalty (3.15)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda alpha, mask, lambda_: penalty(alpha, mask, lambda_, masked=False), r"the padding steps are counted"),
    (lambda alpha, mask, lambda_: penalty(alpha, mask, lambda_, square=1), r"the square is forgotten"),
    (lambda alpha, mask, lambda_: penalty(alpha, mask, lambda_, swapped=True), r"the sums are swapped: "),
    (lambda alpha, mask, lambda_: penalty(alpha, mask, lambda_, masked=False, swapped=True),
     r"the sums are swapped \(and every padding step adds"),
    (lambda alpha, mask, lambda_: penalty(alpha, mask, 1.0), r"lambda is forgotten"),
    (lambda alpha, mask, lambda_: penalty(alpha, mask, lambda_, reduce="mean"), r"averaged over the regions"),
    (lambda alpha, mask, lambda_: penalty(alpha, mask, lambda_, reduce="all"),
     r"one value per caption, got \(\): do not sum or average over the batch"),
    (lambda alpha, mask, lambda_: penalty(alpha.detach(), mask, lambda_), r"carries no gradient"),
], ids=["mask ignored", "no square", "sums swapped", "sums swapped, padding adds", "no lambda", "mean", "batch summed",
        "detached"])
def test_each_penalty_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_doubly_stochastic_penalty(wrong)


def test_the_penalty_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_doubly_stochastic_penalty(stub)


# --------------------------------------------------------------------------- the hard-attention loss


def hard(log_p_y, log_p_s, entropy, b, sampled, lambda_r, lambda_e, detach=True, baseline=-1, reward_sign=1,
         loss_sign=-1, entropy_sign=1, use_sampled=True, use_lambda_r=True, use_lambda_e=True, weighted=False):
    """A student's loss, written from (3.12), with one knob per typical mistake."""
    y = log_p_y.detach() if detach else log_p_y
    reward = reward_sign * (y + baseline * b)
    if use_sampled:
        reward = reward * sampled
    surrogate = (log_p_y + (lambda_r if use_lambda_r else 1.0) * reward * log_p_s
                 + entropy_sign * (lambda_e if use_lambda_e else 1.0) * entropy)
    if weighted:
        surrogate = surrogate * log_p_s.exp()
    return loss_sign * surrogate


def knob(**mistake):
    return lambda *args: hard(*args, **mistake)


def test_a_correct_hard_attention_loss_passes(capsys):
    check_hard_attention_loss(hard)
    check_hard_attention_loss(reference_hard_attention_loss)
    assert "\N{CHECK MARK} the hard-attention loss (3.12)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (knob(detach=False), r"the gradient with respect to log_p_y .* the reward is not detached"),
    (knob(baseline=0), r"the baseline is not subtracted"),
    (knob(baseline=1), r"the baseline is added"),
    (knob(reward_sign=-1, baseline=-1), r"the reward has the wrong sign"),
    (knob(loss_sign=1), r"the sign of the whole loss is flipped"),
    (knob(entropy_sign=-1), r"the entropy term has the wrong sign"),
    (knob(use_sampled=False), r"the REINFORCE term is kept for the captions read with the expected context"),
    (knob(use_lambda_r=False), r"lambda_r is forgotten"),
    (knob(use_lambda_e=False), r"lambda_e is forgotten"),
    (knob(weighted=True), r"each sample is weighted by p\(s~ \| a\) again"),
    (lambda *args: hard(*args).mean(), r"one value per caption, got \(\)"),
    (lambda *args: hard(*args).detach(), r"carries no gradient"),
], ids=["not detached", "no baseline", "baseline added", "reward sign", "loss sign", "entropy sign", "sampled ignored",
        "no lambda_r", "no lambda_e", "weighted by p(s)", "averaged", "detached"])
def test_each_hard_attention_loss_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_hard_attention_loss(wrong)


def test_the_hard_attention_loss_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_hard_attention_loss(stub)


# --------------------------------------------------------------------------- the baseline


def baseline(b, log_p_y, sampled, started, decay=0.9, old=None, new=None, only_sampled=True, first=True,
             reduce="mean", detach=True):
    y = log_p_y.detach() if detach else log_p_y
    y = y[sampled] if only_sampled else y
    mean = y.mean() if reduce == "mean" else y.sum()
    if first and not started:
        return mean
    old = decay if old is None else old
    new = 1 - decay if new is None else new
    return old * b + new * mean


def test_a_correct_baseline_update_passes(capsys):
    check_update_baseline(baseline)
    check_update_baseline(reference_update_baseline)
    assert "\N{CHECK MARK} the moving-average baseline (3.11)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda b, y, s, started, decay=0.9: baseline(b, y, s, started, decay, old=1 - decay, new=decay),
     r"the weights are swapped"),
    (lambda b, y, s, started, decay=0.9: baseline(b, y, s, started, decay, only_sampled=False),
     r"every caption is averaged"),
    (lambda b, y, s, started, decay=0.9: baseline(b, y, s, started, decay, first=False),
     r"the first mini-batch is not special"),
    (lambda b, y, s, started, decay=0.9: baseline(b, y, s, started, decay, reduce="sum"), r"the rewards are summed"),
    (lambda b, y, s, started, decay=0.9: baseline(b, y, s, started, 0.9), r"the decay is ignored"),
    (lambda b, y, s, started, decay=0.9: baseline(b, y, s, started, decay, detach=False),
     r"the new baseline carries a gradient"),
], ids=["weights swapped", "all captions", "first batch", "summed", "decay ignored", "not detached"])
def test_each_baseline_mistake_is_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_update_baseline(wrong)


def test_the_baseline_stub_is_not_implemented_yet():
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check_update_baseline(stub)


# --------------------------------------------------------------------------- the references mirror hard_loss


def test_the_references_reproduce_hard_loss_and_its_baseline():
    """hard_loss on a small model equals the mean of the exercise's loss, and moves b as the exercise's update does."""
    torch.manual_seed(0)
    model = ShowAttendTell(SATConfig(attention="hard", image_size=16, channels=4, D=8, m=8, n=16, att_hidden=8,
                                     lambda_r=0.3, lambda_e=0.05, expected_value_prob=0.5))
    images = torch.rand(4, 3, 16, 16)
    captions = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2], [1, 11, 2, 0, 0]])
    for started in (False, True):
        b_before = model.b.clone()
        torch.manual_seed(1)
        loss, _ = hard_loss(model, {"images": images, "captions": captions})
        torch.manual_seed(1)
        out = model(images, captions)  # the same samples and the same expected-value images
        targets = captions[:, 1:]
        keep = targets != 0
        log_p_y = out["logits"].log_softmax(-1).gather(-1, targets[..., None])[..., 0].mul(keep).sum(1)
        log_alpha = out["alpha"].clamp_min(1e-12).log()
        log_p_s = (log_alpha.gather(-1, out["s"][..., None])[..., 0] * keep).sum(1)
        entropy = (-(out["alpha"] * log_alpha).sum(-1) * keep).sum(1)
        sampled = ~out["use_expectation"]
        mine = reference_hard_attention_loss(log_p_y, log_p_s, entropy, b_before, sampled, 0.3, 0.05).mean()
        assert torch.allclose(loss, mine, atol=1e-6)
        assert torch.allclose(model.b, reference_update_baseline(b_before, log_p_y, sampled, started), atol=1e-6)
        assert bool(model.b_started)
