"""The metrics history of a training run: what the training curves are drawn from."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


class History:
    """Metric values logged against the training step.

    ``log(step, loss=0.3, accuracy=0.9)`` appends values; ``series("loss")`` returns
    ``(steps, values)``; ``names()`` lists every metric seen. Plain lists and floats
    only, so a history goes into a checkpoint and a JSON model card as it is.
    """

    def __init__(self, records: Mapping[str, Mapping[str, list]] | None = None):
        self._series: dict[str, dict[str, list]] = {}
        for name, series in (records or {}).items():
            self._series[name] = {"step": list(series["step"]), "value": list(series["value"])}

    def log(self, step: int, **metrics: float) -> None:
        for name, value in metrics.items():
            value = float(value)
            series = self._series.setdefault(name, {"step": [], "value": []})
            series["step"].append(int(step))
            series["value"].append(value)

    def names(self) -> list[str]:
        return list(self._series)

    def series(self, name: str) -> tuple[list[int], list[float]]:
        if name not in self._series:
            raise KeyError(f"no metric {name!r} in this history; it has: {', '.join(self._series) or 'nothing'}")
        series = self._series[name]
        return list(series["step"]), list(series["value"])

    def last(self, name: str) -> float:
        _, values = self.series(name)
        if not values:
            return math.nan
        return values[-1]

    def state_dict(self) -> dict[str, dict[str, list]]:
        return {name: {"step": list(s["step"]), "value": list(s["value"])} for name, s in self._series.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, Iterable]]) -> "History":
        return cls(state)

    def downsampled(self, max_points: int = 100) -> "History":
        """A copy with at most ``max_points`` points per metric, for a model card or a plot.

        A metric with no more points is copied as it is. A training metric is logged by
        :func:`~attn_course.train.fit` as the mean over the steps since the previous log,
        so it is coarsened the way a run logging less often would have logged it: the first
        value as it is, then the mean of each run of ``k`` consecutive values, weighted by
        the steps each covers, at the step of the run's last value (the last run may be
        shorter; it ends at the last logged step). An ``eval_`` metric is one measurement
        at a step, so it is thinned instead: evenly spaced points, the first and the last
        among them. The curve keeps its start, its end and its shape without the noise
        that picking every ``k``-th value would keep.
        """
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
            raise ValueError(f"max_points must be an integer of at least 2 (the first and the last), "
                             f"got {max_points!r}")
        out = History()
        for name, series in self._series.items():
            steps, values = series["step"], series["value"]
            if len(steps) <= max_points:
                steps, values = list(steps), list(values)
            elif name.startswith("eval_"):
                picks = [round(i * (len(steps) - 1) / (max_points - 1)) for i in range(max_points)]
                steps, values = [steps[i] for i in picks], [values[i] for i in picks]
            else:
                steps, values = _coarsened(steps, values, math.ceil(len(steps) / (max_points - 1)))
            out._series[name] = {"step": steps, "value": values}
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._series

    def __repr__(self) -> str:
        parts = [f"{name}: {len(s['value'])} values" for name, s in self._series.items()]
        return f"History({'; '.join(parts)})"


def _coarsened(steps: list, values: list, k: int) -> tuple[list[int], list[float]]:
    """The first value, then the step-weighted mean of each ``values[j*k:(j+1)*k]`` (``values[1:k]`` for
    ``j = 0``; the last slice may be shorter), at its last step: what a run logging every ``k``-th time
    would have logged, each value being the mean over the steps since the previous one."""
    out_steps, out_values = [steps[0]], [values[0]]
    start = 1
    for end in range(k, len(steps) + k, k):
        end = min(end, len(steps))
        if start >= end:
            continue
        weights = [max(steps[i] - steps[i - 1], 1) for i in range(start, end)]
        total = sum(weight * values[i] for weight, i in zip(weights, range(start, end)))
        out_steps.append(steps[end - 1])
        out_values.append(total / sum(weights))
        start = end
    return out_steps, out_values
