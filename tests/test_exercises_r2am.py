"""Chapter 4's checkers: the reference passes, each typical mistake fails naming it, a stub says "not implemented"."""

import pytest
import torch
import torch.nn.functional as F

from attn_course.exercises import ExerciseFailed
from attn_course.exercises.r2am import check_attention_context, check_recursive_block


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- (4.1) the recursive block


def conv(h, weight, bias):
    return F.conv2d(h, weight, bias, padding=1)


def recursive_block(x, weight, bias, norms, T):
    h = F.relu(norms[0](conv(x, weight, bias)))
    for t in range(1, T + 1):
        h = F.relu(norms[t](conv(h, weight, bias)))
    return h


def recurrent_instead(x, weight, bias, norms, T):  # x fed at every step: (4.2) with w^r = w^f = w^hh
    feed = conv(x, weight, bias)
    h = F.relu(norms[0](feed))
    for t in range(1, T + 1):
        h = F.relu(norms[t](F.conv2d(h, weight, padding=1) + feed))
    return h


def one_too_few(x, weight, bias, norms, T):
    h = x
    for t in range(T):
        h = F.relu(norms[t](conv(h, weight, bias)))
    return h


def one_too_many(x, weight, bias, norms, T):
    h = F.relu(norms[0](conv(x, weight, bias)))
    for t in range(T + 1):
        h = F.relu(norms[t](conv(h, weight, bias)))
    return h


def loops_past_the_norms(x, weight, bias, norms, T):
    h = x
    for t in range(T + 2):
        h = F.relu(norms[t](conv(h, weight, bias)))
    return h


def untied(x, weight, bias, norms, T):  # fresh convolutions after the first step
    h = F.relu(norms[0](conv(x, weight, bias)))
    for t in range(1, T + 1):
        layer = torch.nn.Conv2d(weight.shape[0], weight.shape[0], 3, padding=1).to(x.dtype)
        h = F.relu(norms[t](layer(h)))
    return h


def own_convolutions(x, weight, bias, norms, T):  # the given weight is never used
    layer = torch.nn.Conv2d(weight.shape[0], weight.shape[0], 3, padding=1).to(x.dtype)
    h = x
    for t in range(T + 1):
        h = F.relu(norms[t](layer(h)))
    return h


def unpadded(x, weight, bias, norms, T):
    h = x
    for t in range(T + 1):
        h = F.relu(norms[t](F.conv2d(h, weight, bias)))
    return h


def tied_norms(x, weight, bias, norms, T):
    h = x
    for t in range(T + 1):
        h = F.relu(norms[0](conv(h, weight, bias)))
    return h


def no_bias(x, weight, bias, norms, T):
    return recursive_block(x, weight, None, norms, T)


def norm_after_relu(x, weight, bias, norms, T):
    h = x
    for t in range(T + 1):
        h = norms[t](F.relu(conv(h, weight, bias)))
    return h


def test_the_recursive_block_passes(capsys):
    check_recursive_block(recursive_block)
    assert "\N{CHECK MARK} recursive block (4.1)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (recurrent_instead, "input is fed again at every step.*recurrent block"),
    (one_too_few, "one convolution too few"),
    (one_too_many, "one convolution too many"),
    (loops_past_the_norms, r"IndexError.*norms\[3\] would belong to a convolution too many"),
    (untied, "two calls on the same input give different results.*tied"),
    (own_convolutions, "no gradient reaches the weight w\\^hh"),
    (unpadded, "without padding=1 every 3 x 3 convolution shrinks the map"),
    (tied_norms, r"the same batch norm, norms\[0\], is used at every step"),
    (no_bias, "the bias b is left out"),
    (norm_after_relu, "the batch norm comes after the ReLU"),
    (stub, "not implemented yet"),
], ids=lambda value: getattr(value, "__name__", "")[:30] if callable(value) else "")
def test_recursive_block_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_recursive_block(wrong)


def test_the_recursive_checker_leaves_the_global_random_state_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_recursive_block(recursive_block)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- (4.6) scores, weights and context


def scores(a, h_prev, W_a, b_a, W_h, w, tanh=torch.tanh, with_h=True, with_b=True, h_axis=lambda u: u[:, None, :]):
    inner = a @ W_a.T + (b_a if with_b else 0)
    if with_h:
        inner = inner + h_axis(h_prev @ W_h.T)
    return tanh(inner) @ w  # (B, L)


def attention_context(a, h_prev, W_a, b_a, W_h, w):
    alpha = scores(a, h_prev, W_a, b_a, W_h, w).softmax(dim=1)
    return (alpha[:, :, None] * a).sum(1), alpha


def with_alpha(alpha_of):
    def wrong(a, h_prev, W_a, b_a, W_h, w):
        alpha = alpha_of(a, h_prev, W_a, b_a, W_h, w)
        return (alpha[:, :, None] * a).sum(1), alpha
    return wrong


no_tanh = with_alpha(lambda *args: scores(*args, tanh=lambda u: u).softmax(1))
batch_softmax = with_alpha(lambda *args: scores(*args).softmax(0))
size_one_softmax = with_alpha(lambda *args: scores(*args)[..., None].softmax(-1)[..., 0])
no_softmax = with_alpha(lambda *args: scores(*args))
no_state = with_alpha(lambda *args: scores(*args, with_h=False).softmax(1))
no_bias_a = with_alpha(lambda *args: scores(*args, with_b=False).softmax(1))
state_not_broadcast = with_alpha(lambda *args: scores(*args, h_axis=lambda u: u).softmax(1))


def mean_context(a, h_prev, W_a, b_a, W_h, w):
    return a.mean(1), scores(a, h_prev, W_a, b_a, W_h, w).softmax(dim=1)


def alpha_detached(a, h_prev, W_a, b_a, W_h, w):
    _, alpha = attention_context(a, h_prev, W_a, b_a, W_h, w)
    return (alpha.detach()[:, :, None] * a).sum(1), alpha


def test_the_attention_context_passes(capsys):
    check_attention_context(attention_context)
    assert "\N{CHECK MARK} attention context (4.6)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (no_tanh, "the tanh is forgotten"),
    (batch_softmax, r"the softmax runs over the batch axis \(dim=0\)"),
    (size_one_softmax, "the softmax runs over an axis of size 1"),
    (no_softmax, "the softmax is forgotten"),
    (no_state, r"W_h h_\{t-1\} is left out"),
    (no_bias_a, "the bias b_a is left out"),
    (state_not_broadcast, "broadcasts over the wrong axis: column i gets the state of line i"),
    (mean_context, "z_t is the plain mean of the columns"),
    (alpha_detached, "the gradient with respect to `a`"),
    (stub, "not implemented yet"),
], ids=["no_tanh", "batch_softmax", "size_one_softmax", "no_softmax", "no_state", "no_bias_a",
        "state_not_broadcast", "mean_context", "alpha_detached", "stub"])
def test_attention_context_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_attention_context(wrong)


def test_the_state_broadcast_error_gets_a_hint_where_the_shapes_do_not_allow_it():
    """With as many lines as columns the wrong broadcast runs and is named (above); with B != L it raises, and the
    message says how to broadcast."""
    def column_axis_in_the_wrong_place(a, h_prev, W_a, b_a, W_h, w):
        alpha = scores(a, h_prev, W_a, b_a, W_h, w, h_axis=lambda u: u[:, :, None]).softmax(1)
        return (alpha[:, :, None] * a).sum(1), alpha
    with pytest.raises(ExerciseFailed, match=r"RuntimeError.*\[:, None, :\]"):
        check_attention_context(column_axis_in_the_wrong_place)


def test_messages_name_the_returned_value():
    with pytest.raises(ExerciseFailed, match=r"attention context \(4\.6\), the returned z_t \("):
        check_attention_context(no_tanh)
