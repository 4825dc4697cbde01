"""toycalc: small numeric helpers. `clamp` is the function the episodes rewrite."""

from toycalc.ops import clamp, mean, median

__all__ = ["clamp", "mean", "median"]
