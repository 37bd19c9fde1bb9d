"""The arithmetic of the report: means and spreads over seeds, differences against the reference,
and pairwise interactions, each with the rule that says whether it exceeds the seed spread.

The rule (a two-sided test at about 95 %, normal approximation): a contrast ``c`` of variant
means is flagged when ``|c| > 2 * SE``, with ``SE = s_p * sqrt(sum_i w_i^2 / k_i)`` where ``s_p``
is the pooled standard deviation of the variants involved (each variant's seeds deviate from
its own mean; degrees of freedom = total seeds - number of variants) and ``w_i`` the contrast's
weights. For a difference against the reference the weights are (1, -1); for an interaction
``m(a,b) - m(a) - m(b) + m(ref)`` they are (1, -1, -1, 1). With one seed per variant there are no
degrees of freedom: nothing is flagged and the report says "n/a".
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

HIGHER_IS_BETTER = ("images_per_s", "prompt_following")
NEUTRAL = ("steps",)


@attrs.frozen
class Spread:
    """``n`` values summarised: mean and sample standard deviation (NaN when ``n`` < 2)."""

    n: int
    mean: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        n = len(values)
        if n == 0:
            return cls(0, math.nan, math.nan)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
        return cls(n, mean, std)


@attrs.frozen
class Contrast:
    """A weighted sum of variant means, its standard error and the verdict of the rule
    (``significant`` is None when the seeds give no spread)."""

    value: float
    se: float | None
    significant: bool | None


def pooled_std(groups: Sequence[Spread]) -> tuple[float, int]:
    """Pooled standard deviation and its degrees of freedom (0 when no group has two values)."""
    dof = sum(g.n - 1 for g in groups if g.n > 1)
    if dof == 0:
        return math.nan, 0
    return math.sqrt(sum((g.n - 1) * g.std**2 for g in groups if g.n > 1) / dof), dof


def contrast(groups: Sequence[Spread], weights: Sequence[float]) -> Contrast:
    """``sum w_i * mean_i`` with the rule of the module docstring."""
    if any(g.n == 0 for g in groups):
        return Contrast(math.nan, None, None)
    value = sum(w * g.mean for w, g in zip(weights, groups))
    s_p, dof = pooled_std(groups)
    if dof == 0:
        return Contrast(value, None, None)
    se = s_p * math.sqrt(sum(w * w / g.n for w, g in zip(weights, groups)))
    scale = max(abs(g.mean) for g in groups)
    significant = abs(value) > 2 * se and abs(value) > 1e-12 * scale
    return Contrast(value, se, significant)


def difference(variant: Spread, reference: Spread) -> Contrast:
    """``mean(variant) - mean(reference)``."""
    return contrast([variant, reference], [1.0, -1.0])


def interaction(reference: Spread, a: Spread, b: Spread, both: Spread) -> Contrast:
    """Joint effect minus the sum of the separate effects, all measured from ``reference``:
    ``(m_ab - m_ref) - (m_a - m_ref) - (m_b - m_ref) = m_ab - m_a - m_b + m_ref``.

    The value is the same whichever corner of the 2x2 square is the reference, so in a
    leave-one-out design (reference = full recipe, changes = removals) it equals the interaction
    of adding both techniques to the recipe without them.
    """
    return contrast([both, a, b, reference], [1.0, -1.0, -1.0, 1.0])


def relative(delta: float, reference: Spread) -> float:
    """``delta`` as a fraction of the reference mean (NaN when that mean is 0)."""
    return delta / abs(reference.mean) if reference.mean else math.nan


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better (losses, distances, time, memory),
    0 when neither (steps)."""
    if metric in NEUTRAL:
        return 0
    return 1 if metric.split("/")[0] in HIGHER_IS_BETTER else -1


def verdict(c: Contrast, metric: str, better: str = "better", worse: str = "worse", same: str = "within spread") -> str:
    """A word for a flagged contrast, oriented by the metric's direction."""
    if c.significant is None:
        return "n/a"
    if not c.significant:
        return same
    sign = direction(metric) * (1 if c.value > 0 else -1)
    return better if sign > 0 else worse if sign < 0 else "changed"
