"""The metrics history: logging, and the downsampled copy a model card keeps."""

import math
import random

import pytest

from attn_course.history import History


def logged_like_fit(per_step, log_every):
    """A History as fit logs it: the mean of the values since the previous log, and the last step always."""
    history, window = History(), []
    for step, value in enumerate(per_step, start=1):
        window.append(value)
        if step % log_every == 0 or step == len(per_step):
            history.log(step, loss=sum(window) / len(window))
            window = []
    return history


def test_a_short_history_is_copied_as_it_is():
    history = History()
    for step in range(1, 6):
        history.log(step * 10, loss=1.0 / step)
    history.log(50, eval_accuracy=0.5)
    small = history.downsampled(5)
    assert small.state_dict() == history.state_dict()
    small.log(60, loss=0.0)
    assert len(history.series("loss")[0]) == 5  # a copy, not a view


@pytest.mark.parametrize("max_points", [2, 3, 7, 20, 100])
@pytest.mark.parametrize("steps", [7, 99, 101, 1003])
def test_each_point_is_the_mean_since_the_previous_one(steps, max_points):
    """Coarsened as a run logging less often would have logged it, the partial last window included."""
    rng = random.Random(steps * 1000 + max_points)
    per_step = [rng.gauss(1.0, 0.5) for _ in range(steps)]
    history = logged_like_fit(per_step, log_every=5)
    small = history.downsampled(max_points)
    logged_steps, logged_values = history.series("loss")
    got_steps, got_values = small.series("loss")
    assert len(got_steps) <= max_points
    assert got_steps[0] == logged_steps[0] and got_values[0] == logged_values[0]  # the first log as it is
    assert got_steps[-1] == logged_steps[-1] == steps
    assert got_steps == sorted(set(got_steps)) and set(got_steps) <= set(logged_steps)
    if len(logged_steps) <= max_points:
        assert (got_steps, got_values) == (logged_steps, logged_values)
    for previous, step, value in zip([0] + got_steps, got_steps, got_values):
        assert math.isclose(value, sum(per_step[previous:step]) / (step - previous), rel_tol=1e-9)


def test_long_histories_keep_nearly_max_points_evenly_spaced():
    history = logged_like_fit([1.0] * 100_000, log_every=50)  # 2000 logs, as ram-cluttered60
    steps, values = history.downsampled(100).series("loss")
    assert 90 <= len(steps) <= 100 and values == [1.0] * len(steps)
    gaps = {b - a for a, b in zip(steps[1:-1], steps[2:-1])}
    assert gaps == {1050}  # every 21 logs, between the first log and the last (shorter) window


def test_evaluations_are_thinned_keeping_the_first_and_the_last():
    history = History()
    for step in range(1, 251):
        history.log(step * 10, eval_accuracy=step / 250)
    steps, values = history.downsampled(10).series("eval_accuracy")
    assert len(steps) == 10 and steps[0] == 10 and steps[-1] == 2500
    assert values == [step / 2500 for step in steps]  # measurements kept as they are, not averaged
    assert max(b - a for a, b in zip(steps, steps[1:])) - min(b - a for a, b in zip(steps, steps[1:])) <= 10


def test_downsampling_twice_changes_nothing():
    history = logged_like_fit([random.Random(0).random() for _ in range(3000)], log_every=10)
    once = history.downsampled(100)
    assert once.downsampled(100).state_dict() == once.state_dict()


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True, "100"])
def test_max_points_must_be_an_integer_of_at_least_two(bad):
    with pytest.raises(ValueError, match="max_points must be an integer of at least 2"):
        History().downsampled(bad)
