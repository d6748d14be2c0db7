"""Statistics for comparing sweep settings across seeds, computed with scipy.

`summarize(values)`: n, mean, sample standard deviation and the 95% confidence interval of the
mean (Student t); with one value there is no spread, so std and CI are None (never "± 0").

`compare(arm, reference, ...)`: the difference `arm − reference` of one metric. Runs are paired
by seed (`scipy.stats.ttest_rel`) when both arms hold the same seeds; otherwise the arms are
compared unpaired with Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`), and the result
says so. `Comparison.verdict` is one plain line for a report, and `seeds_needed` estimates how
many seeds (pairs, or runs per arm when unpaired) would make the observed difference significant
at alpha=0.05 with 80% power: the smallest n whose two-sided t-test power, computed exactly from
the noncentral t distribution (`scipy.stats.nct`) at the observed effect size, reaches 0.8.
Such a post-hoc estimate inherits the noise of the observed effect: a rough guide, not a promise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed is None beyond this (the difference is too small to chase)


@dataclass(frozen=True)
class Summary:
    """One setting's values of one metric over its seeds."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None when n == 1
    ci_low: float | None  # 95% confidence interval of the mean (Student t); None when n == 1
    ci_high: float | None

    def describe(self, cell_format: str = "{:.4f}") -> str:
        """ "0.9000 ± 0.0200 [0.8503, 0.9497]", or the mean alone for n = 1."""
        f = cell_format.format
        if self.std is None:
            return f(self.mean)
        return f"{f(self.mean)} ± {f(self.std)} [{f(self.ci_low)}, {f(self.ci_high)}]"


@dataclass(frozen=True)
class Comparison:
    """`arm − reference` for one metric."""

    arm: str
    reference: str
    paired: bool  # paired by seed (ttest_rel); False: unpaired Welch (ttest_ind, equal_var=False)
    n: int  # pairs when paired, else the smaller arm's number of runs
    n_arm: int
    n_reference: int
    mean: float  # mean paired difference, or difference of the means when unpaired
    std: float | None  # std of the paired differences (None when unpaired or n == 1)
    ci_low: float | None  # 95% CI of the mean difference; None when it cannot be computed
    ci_high: float | None
    p_value: float | None  # two-sided; None when the test is undefined (n too small, no spread)
    seeds_needed: int | None  # pairs (runs per arm when unpaired) for 80% power at alpha=0.05
    note: str = ""  # e.g. why the comparison is unpaired

    @property
    def test(self) -> str:
        return "paired t-test" if self.paired else "Welch t-test (unpaired)"

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def sample_size(self) -> str:
        """ "3 pairs", "1 pair", or "3 vs 4 runs" (unpaired: arm vs reference)."""
        if self.paired:
            return f"{self.n} pair" + ("s" if self.n != 1 else "")
        return f"{self.n_arm} vs {self.n_reference} runs"

    @property
    def verdict(self) -> str:
        """One line, e.g. "A − B: +0.097 [0.061, 0.133], p=0.008, n=3 pairs"."""
        head = f"{self.arm} − {self.reference}: {format_value(self.mean, signed=True)}"
        if self.ci_low is not None and self.ci_high is not None:
            head += f" [{format_value(self.ci_low)}, {format_value(self.ci_high)}]"
        if self.p_value is not None:
            head += f", {format_p(self.p_value)}"
        head += f", n={self.sample_size}"
        if self.note:
            head += f" ({self.note})"
        if self.n < 2:
            return f"{head}: too few runs for a test; run more seeds"
        if self.p_value is None:
            if self.mean == 0:
                return f"{head}: identical at every seed, not distinguishable from seed noise"
            return f"{head}: the runs have no spread, so no t-test is possible"
        if self.significant:
            return head
        tail = f"{head}: difference not distinguishable from seed noise at n={self.n}"
        tail += f" ({format_p(self.p_value)})"
        if self.seeds_needed is not None:
            unit = "pairs" if self.paired else "runs per arm"
            tail += f"; ~{self.seeds_needed} {unit} would detect it with 80% power"
        return tail


def format_value(x: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if x != 0 and abs(x) < 0.0005:
        return f"{x:{sign}.2e}"
    return f"{x:{sign}.3f}"


def format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """n, mean, sample std and the Student-t confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return Summary(1, mean, None, None, None)
    # Student t interval of the mean; [mean, mean] when all values are equal (t.interval: nan)
    ci = _quiet(lambda: stats.ttest_1samp(x, 0.0).confidence_interval(confidence))
    return Summary(int(x.size), mean, float(x.std(ddof=1)), float(ci.low), float(ci.high))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _quiet(test, *args, **kwargs):
    """scipy warns about near-identical data ("precision loss"); the None results say it."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return test(*args, **kwargs)


def compare(
    arm: Mapping[Hashable, float] | Sequence[float],
    reference: Mapping[Hashable, float] | Sequence[float],
    arm_name: str = "arm",
    reference_name: str = "reference",
    confidence: float = CONFIDENCE,
) -> Comparison:
    """`arm − reference`. Values keyed by seed are paired when both arms hold the same seeds;
    otherwise (other seeds, or plain sequences) the arms are compared unpaired (Welch)."""
    if len(arm) == 0 or len(reference) == 0:
        raise ValueError("compare needs at least one value in each arm")
    names = dict(arm=arm_name, reference=reference_name, n_arm=len(arm))
    names["n_reference"] = len(reference)
    keyed = isinstance(arm, Mapping) and isinstance(reference, Mapping)
    if keyed and set(arm) == set(reference):
        seeds = sorted(arm, key=str)
        a = np.array([arm[s] for s in seeds], dtype=float)
        b = np.array([reference[s] for s in seeds], dtype=float)
        diffs = a - b
        mean = float(diffs.mean())
        if len(seeds) == 1:
            return Comparison(paired=True, n=1, mean=mean, std=None, ci_low=None, ci_high=None,
                              p_value=None, seeds_needed=None, **names)  # fmt: skip
        result = _quiet(stats.ttest_rel, a, b)
        ci = _quiet(result.confidence_interval, confidence)
        std = float(diffs.std(ddof=1))
        return Comparison(
            paired=True, n=len(seeds), mean=mean, std=std,
            ci_low=_finite(ci.low), ci_high=_finite(ci.high), p_value=_finite(result.pvalue),
            seeds_needed=seeds_needed(mean, std, paired=True), **names,
        )  # fmt: skip
    a = np.array(list(arm.values() if isinstance(arm, Mapping) else arm), dtype=float)
    b = np.array(
        list(reference.values() if isinstance(reference, Mapping) else reference), dtype=float
    )
    mean = float(a.mean() - b.mean())
    names["note"] = (
        "seeds differ between the arms: unpaired Welch test"
        if keyed
        else "runs not keyed by distinct seeds: unpaired Welch test"
    )
    if min(a.size, b.size) < 2:
        return Comparison(paired=False, n=min(a.size, b.size), mean=mean, std=None, ci_low=None,
                          ci_high=None, p_value=None, seeds_needed=None, **names)  # fmt: skip
    result = _quiet(stats.ttest_ind, a, b, equal_var=False)
    ci = _quiet(result.confidence_interval, confidence)
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return Comparison(
        paired=False, n=min(a.size, b.size), mean=mean, std=None,
        ci_low=_finite(ci.low), ci_high=_finite(ci.high), p_value=_finite(result.pvalue),
        seeds_needed=seeds_needed(mean, pooled, paired=False), **names,
    )  # fmt: skip


def t_test_power(effect: float, n: int, paired: bool = True, alpha: float = ALPHA) -> float:
    """Power of the two-sided t-test at standardized effect `effect` (mean / std), from the
    noncentral t distribution: n pairs (df n-1, nc effect·√n) or n runs per arm (df 2n-2,
    nc effect·√(n/2))."""
    df, nc = (n - 1, effect * math.sqrt(n)) if paired else (2 * n - 2, effect * math.sqrt(n / 2))
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(t_crit, df, nc) + stats.nct.cdf(-t_crit, df, nc))


def seeds_needed(
    difference: float, std: float, paired: bool = True, alpha: float = ALPHA, power: float = POWER
) -> int | None:
    """The smallest n (pairs, or runs per arm) whose t-test reaches `power` at the observed
    `difference` and `std` (of the paired differences, or the arms' pooled std); None when the
    data give no effect size (no spread or no difference) or n would exceed MAX_SEEDS."""
    if not (std > 0 and difference != 0 and math.isfinite(difference / std)):
        return None
    effect = abs(difference) / std
    for n in range(2, MAX_SEEDS + 1):
        if t_test_power(effect, n, paired, alpha) >= power:
            return n
    return None
