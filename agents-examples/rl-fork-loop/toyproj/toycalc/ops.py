"""Numeric helpers. The RL example's episodes each replace the body of `clamp`."""


def clamp(x, lo, hi):
    # EPISODE-EDIT-START
    return max(lo, min(x, hi))
    # EPISODE-EDIT-END


def mean(values):
    values = list(values)
    if not values:
        raise ValueError("mean of nothing")
    return sum(values) / len(values)


def median(values):
    s = sorted(values)
    if not s:
        raise ValueError("median of nothing")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
