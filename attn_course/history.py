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

    def __contains__(self, name: object) -> bool:
        return name in self._series

    def __repr__(self) -> str:
        parts = [f"{name}: {len(s['value'])} values" for name, s in self._series.items()]
        return f"History({'; '.join(parts)})"
