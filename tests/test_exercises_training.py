"""The training checks: a student's function plugged into the chapter's model trains it, a wrong one is caught, and
the course's function is always put back.

The fast tests check the plumbing (the swap takes effect, the function comes back after an error, a stub, a
wrong shape, a missing gradient or a NaN fail at once with a message that says so); the slow ones train: the
students' correct functions (the notebooks' solutions, written from scratch) pass, and a function that carries
nothing fails with the two runs side by side.
"""

import math
import re
import types

import pytest
import torch
import torch.nn.functional as F

from attn_course import draw, ram, show_attend_tell, transformer
from attn_course.data.sequences import SequenceTask
from attn_course.exercises import ExerciseFailed
from attn_course.exercises.draw import SHORT_CONFIG as DRAW_CONFIG
from attn_course.exercises.draw import _filterbank_arguments, train_with_filterbank
from attn_course.exercises.ram import _sensor_arguments, train_with_glimpse_sensor
from attn_course.exercises.show_attend_tell import SHORT_CONFIG as SAT_CONFIG
from attn_course.exercises.show_attend_tell import train_with_soft_context
from attn_course.exercises.training import Plugged, plugged_in
from attn_course.exercises.transformer import SHORT_CONFIG as TRANSFORMER_CONFIG
from attn_course.exercises.transformer import (_attention_arguments, _written_out,
                                               train_with_scaled_dot_product_attention)
from mnist_files import needs_mnist


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- the students' functions


def attention(Q, K, V, mask=None, scale=None, over=-1):
    """(5.1), as the notebook's solution; ``scale`` and ``over`` (the softmax's axis) give two typical mistakes."""
    scores = Q @ K.transpose(-2, -1) * (1 / math.sqrt(Q.shape[-1]) if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=over).nan_to_num()
    return weights @ V, weights


def filterbank(g_X, g_Y, delta, sigma2, N, A, B, offset=0.5):
    """(2.7)-(2.8), as the notebook's solution; ``offset=0`` is the grid centre off by half a stride."""
    i = torch.arange(1, N + 1, dtype=g_X.dtype)
    out = []
    for g, size in ((g_X, A), (g_Y, B)):
        mu = g[:, None] + (i - N / 2 - offset) * delta[:, None]
        pixels = torch.arange(1, size + 1, dtype=g_X.dtype)
        rows = torch.exp(-(pixels - mu[..., None]) ** 2 / (2 * sigma2[:, None, None]))
        out.append(rows / (rows.sum(-1, keepdim=True) + 1e-8))
    return tuple(out)


def rho(images, l, glimpse_size, num_scales, swap_xy=False):
    """The glimpse sensor as the notebook's solution: a loop that crops around the nearest pixel and averages."""
    B, C, H, W = images.shape
    g = glimpse_size
    patches = images.new_zeros(B, num_scales, C, g, g)
    for b in range(B):
        x, y = (l[b, 1], l[b, 0]) if swap_xy else (l[b, 0], l[b, 1])
        column, row = (float(x) + 1) * W / 2, (float(y) + 1) * H / 2
        for i in range(num_scales):
            side = g * 2 ** i
            padded = F.pad(images[b], (side, side, side, side))
            left, top = round(column - side / 2) + side, round(row - side / 2) + side
            patches[b, i] = F.avg_pool2d(padded[None, :, top:top + side, left:left + side], 2 ** i)[0]
    return patches


def soft_context(a, alpha, beta=None, gate=True):
    """(3.13)-(3.14), as the notebook's solution; ``gate=False`` forgets beta."""
    z = (alpha[:, None, :] @ a)[:, 0]
    return z if beta is None or not gate else beta * z


def nothing(correct):
    """``correct`` times zero: it runs and keeps its gradient, but carries nothing to the model."""
    def f(*args):
        out = correct(*args)
        return tuple(v * 0 for v in out) if isinstance(out, tuple) else out * 0
    return f


# --------------------------------------------------------------------------- the chapters' models, one forward pass


def transformer_pass():
    torch.manual_seed(0)
    model = _written_out(TRANSFORMER_CONFIG).eval()
    batch = SequenceTask("reverse", test_size=10).sample(torch.Generator().manual_seed(0), 4)
    return model(batch["src"], batch["tgt"][:, :-1])


def draw_pass():
    torch.manual_seed(0)
    images = (torch.rand(4, 1, 28, 28) > 0.7).float()
    return draw.DRAW(DRAW_CONFIG)(images, generator=torch.Generator().manual_seed(1))["logits"]


def ram_pass():
    torch.manual_seed(0)
    images = torch.rand(4, 1, 28, 28)
    centres = torch.randint(0, 29, (6, 4, 2), generator=torch.Generator().manual_seed(0))  # on whole pixels, where
    locations = 2 * centres / 28 - 1  # a crop is exact
    return ram.RecurrentAttentionModel(ram.PAPER_CONFIGS["mnist28"])(images, locations=locations)["log_probs"]


def sat_pass():
    torch.manual_seed(0)
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 10, 2]])
    return show_attend_tell.ShowAttendTell(SAT_CONFIG)(torch.rand(2, 3, 32, 32), captions)["logits"]


CHAPTERS = {  # module, name, the model's call -> the exercise's, one forward pass, the right and a wrong function
    "transformer": (transformer, "scaled_dot_product_attention", _attention_arguments, transformer_pass, attention,
                    lambda Q, K, V, mask=None: attention(Q, K, V, mask, scale=1.0)),
    "draw": (draw, "_filterbank", _filterbank_arguments, draw_pass, filterbank,
             lambda *args: filterbank(*args, offset=0.0)),
    "ram": (ram, "_glimpse_sensor", _sensor_arguments, ram_pass, rho, lambda *args: rho(*args, swap_xy=True)),
    "sat": (show_attend_tell, "soft_context", lambda a, alpha, beta=None: (a, alpha, beta), sat_pass, soft_context,
            lambda a, alpha, beta=None: soft_context(a, alpha, beta, gate=False)),
}


def plugged_pass(chapter, function):
    module, name, arguments, forward, _, _ = CHAPTERS[chapter]
    with torch.no_grad(), plugged_in(module, name, Plugged(function, getattr(module, name), "test", arguments)):
        return forward()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_plugged_in_function_is_the_one_the_model_runs(chapter):
    module, name, _, _, right, wrong = CHAPTERS[chapter]
    original = getattr(module, name)
    course = plugged_pass(chapter, original)
    assert torch.allclose(plugged_pass(chapter, right), course, atol=1e-4), "a correct function changes nothing"
    assert not torch.allclose(plugged_pass(chapter, wrong), course, atol=1e-3), "a wrong one changes the output"
    assert getattr(module, name) is original


def test_plugged_in_puts_the_function_back_after_an_error():
    module = types.ModuleType("fake")
    module.f = lambda: "course"
    with pytest.raises(RuntimeError, match="inside"), plugged_in(module, "f", lambda: "student"):
        assert module.f() == "student"
        raise RuntimeError("inside")
    assert module.f() == "course"
    with pytest.raises(AttributeError, match="no function 'g'"), plugged_in(module, "g", print):
        pass


def test_a_student_function_may_call_the_course_function_it_replaces():
    """The student's soft context calls show_attend_tell.soft_context, which is the plugged name: no recursion."""
    a, alpha, beta = torch.randn(2, 5, 3), torch.softmax(torch.randn(2, 5), -1), torch.rand(2, 1)
    expected = show_attend_tell.soft_context(a, alpha, beta)
    wrapper = Plugged(lambda a, alpha, beta: 2 * show_attend_tell.soft_context(a, alpha, beta),
                      show_attend_tell.soft_context, "the soft context", lambda a, alpha, beta=None: (a, alpha, beta))
    with plugged_in(show_attend_tell, "soft_context", wrapper):
        assert torch.allclose(show_attend_tell.soft_context(a, alpha, beta), 2 * expected)


def test_a_result_in_double_precision_is_cast_to_the_models():
    Q = K = V = torch.randn(2, 4, 8)
    wrapper = Plugged(lambda Q, K, V, mask: attention(Q.double(), K.double(), V.double()),
                      transformer.scaled_dot_product_attention, "attention", _attention_arguments)
    out, weights = wrapper(Q, K, V, None)
    assert out.dtype == weights.dtype == torch.float32
    assert torch.allclose(out, transformer.scaled_dot_product_attention(Q, K, V)[0], atol=1e-5)


# --------------------------------------------------------------------------- failing at once, before training


@pytest.mark.parametrize("check", [train_with_scaled_dot_product_attention, train_with_filterbank,
                                   train_with_glimpse_sensor, train_with_soft_context],
                         ids=["transformer", "draw", "ram", "sat"])
def test_a_stub_is_not_implemented_yet_before_any_data_is_loaded(check, monkeypatch):
    monkeypatch.setenv("ATTN_COURSE_DATA", "/nonexistent")  # a stub must fail before MNIST is looked for
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check(stub)


def test_an_error_in_the_students_function_is_reported_at_its_first_call():
    def broken(Q, K, V, mask=None):
        raise ValueError("my bug")

    with pytest.raises(ExerciseFailed, match=r"\(a first call, before training\): your function raised ValueError: "
                                             r"my bug"):
        train_with_scaled_dot_product_attention(broken)


def test_an_error_inside_the_model_is_reported_and_the_course_function_comes_back():
    def broken_in_single_precision(Q, K, V, mask=None):  # the first call's example is in double precision
        if Q.dtype == torch.float32:
            raise ValueError("my bug")
        return attention(Q, K, V, mask)

    original = transformer.scaled_dot_product_attention
    with pytest.raises(ExerciseFailed, match=r"inside the model, on inputs of shapes \(\(500, 2, 12, 16\), .*\): "
                                             r"your function raised ValueError: my bug"):
        train_with_scaled_dot_product_attention(broken_in_single_precision)
    assert transformer.scaled_dot_product_attention is original


def test_a_result_of_the_wrong_shape_is_named_with_the_shape_the_model_needs():
    def summed_over_the_features(a, alpha, beta=None):  # (B, L) instead of (B, D)
        return beta * (a * alpha[..., None]).sum(-1)

    with pytest.raises(ExerciseFailed, match=r"returned shape \(250, 16\); the model needs a tensor of shape "
                                             r"\(250, 32\)"):
        train_with_soft_context(summed_over_the_features)
    assert show_attend_tell.soft_context.__module__ == "attn_course.decoding"


@needs_mnist
def test_a_result_without_gradient_is_named():
    def detached(g_X, g_Y, delta, sigma2, N, A, B):
        return tuple(F.detach() for F in filterbank(g_X, g_Y, delta, sigma2, N, A, B))

    with pytest.raises(ExerciseFailed, match="carries no gradient, so the model cannot learn through it"):
        train_with_filterbank(detached)


def test_a_result_that_holds_nan_is_reported():
    def nan_attention(Q, K, V, mask=None):
        out, weights = attention(Q, K, V, mask)
        return out * float("nan"), weights

    with pytest.raises(ExerciseFailed, match=r"your result \(value 0\) holds NaN or infinity"):
        train_with_scaled_dot_product_attention(nan_attention)


def test_a_loss_that_becomes_nan_while_training_is_reported():
    training_calls = []

    def nan_from_the_second_step(Q, K, V, mask=None):  # three attentions a step: from the second step on, NaN
        out, weights = attention(Q, K, V, mask)
        if Q.requires_grad:
            training_calls.append(1)
        return (out * float("nan") if len(training_calls) > 3 else out), weights

    with pytest.raises(ExerciseFailed, match=r"with your function in a Transformer .* the training loss became nan "
                                             r"at step 2 \(of 300\): does your function return NaN"):
        train_with_scaled_dot_product_attention(nan_from_the_second_step)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("check, student, says", [
    (train_with_scaled_dot_product_attention, attention, "scaled dot-product attention (5.1) trains a Transformer"),
    pytest.param(train_with_filterbank, filterbank, "the filterbank (2.7)-(2.8) trains DRAW", marks=needs_mnist),
    pytest.param(train_with_glimpse_sensor, rho, "the glimpse sensor rho(x, l) trains RAM", marks=needs_mnist),
    (train_with_soft_context, soft_context, "the soft context (3.13)-(3.14) trains Show, Attend and Tell"),
], ids=["transformer", "draw", "ram", "sat"])
def test_a_correct_function_trains_the_model(check, student, says, capsys):
    check(student)
    line = capsys.readouterr().out
    assert f"\N{CHECK MARK} {says}" in line and "with the course's, from" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("check, wrong, says", [
    (train_with_scaled_dot_product_attention, lambda Q, K, V, mask=None: attention(Q, K, V, mask, over=-2),
     r"exact match .* went from 0\.0% to \d"),  # normalised over the queries: the decoder sees the future
    pytest.param(train_with_filterbank, nothing(filterbank), r"bound on 500 test digits went from", marks=needs_mnist),
    pytest.param(train_with_glimpse_sensor, nothing(rho), r"accuracy on 1000 test digits went from",
                 marks=needs_mnist),
    (train_with_soft_context, nothing(soft_context), r"content-word accuracy on 250 validation scenes went from"),
], ids=["transformer-softmax-over-queries", "draw-nothing", "ram-nothing", "sat-nothing"])
def test_a_function_the_model_cannot_learn_with_fails(check, wrong, says):
    with pytest.raises(ExerciseFailed, match=r"did not learn enough with your function") as failed:
        check(wrong)
    assert "With the course's function it goes from" in str(failed.value)
    assert re.search(says, str(failed.value)), str(failed.value)
