"""Numbers over seeds: n, mean, std and a 95% confidence interval (Student t, scipy)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample std; None with one value
    ci_low: float | None  # 95% CI of the mean; None with one value
    ci_high: float | None

    def describe(self, cell_format: str = "{:.4f}") -> str:
        """ "0.9000 ± 0.0200 [0.8503, 0.9497]", or the mean alone for n = 1."""
        if self.std is None:
            return cell_format.format(self.mean)
        f = cell_format.format
        return f"{f(self.mean)} ± {f(self.std)} [{f(self.ci_low)}, {f(self.ci_high)}]"


def summarize(values: list[float], confidence: float = 0.95) -> Summary:
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Summary(len(values), mean, None, None, None)
    std = statistics.stdev(values)
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * std / math.sqrt(len(values))
    return Summary(len(values), mean, std, mean - half, mean + half)
