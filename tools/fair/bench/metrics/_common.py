"""Input checks and reductions shared by the metric families."""
from __future__ import annotations

import numpy as np


def same_shape(a, b, names: tuple[str, str] = ("pred", "gt")) -> tuple[np.ndarray, np.ndarray]:
  """`a` and `b` as arrays; ValueError naming both shapes when they differ."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"{names[0]} shape {a.shape} != {names[1]} shape {b.shape}")
  return a, b


def valid_mask(valid, shape: tuple[int, ...]) -> np.ndarray:
  """`valid` as a boolean mask of `shape` (all True when None)."""
  if valid is None:
    return np.ones(shape, bool)
  valid = np.asarray(valid, bool)
  if valid.shape != shape:
    raise ValueError(f"valid shape {valid.shape} != data shape {shape}")
  return valid


def mean_or_nan(x) -> float:
  """Mean of `x`, NaN (without a warning) when `x` is empty."""
  return float(np.mean(x)) if np.size(x) else float("nan")
