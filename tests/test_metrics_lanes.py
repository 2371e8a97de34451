import math

import numpy as np
import pytest

from tools.fair.bench.metrics import LaneCounts, lane_counts, lane_point_accuracy, lateral_error

ROWS = np.arange(0, 40, 10.0)


def vertical(x, rows=ROWS):
  return np.stack([np.full(len(rows), float(x)), rows], axis=1)


def test_point_accuracy_hand_computed():
  gt = vertical(100)  # rows 0, 10, 20, 30
  pred = np.array([[125.0, 20.0], [100.0, 0.0], [105.0, 10.0]])  # unsorted, stops at row 20
  assert lane_point_accuracy(pred, gt, tol_px=20) == 0.5  # rows 0, 10 hit; 20 off by 25; 30 not reached
  sparse = np.array([[100.0, 0.0], [120.0, 20.0]])  # x interpolated to 110 at row 10
  assert lane_point_accuracy(sparse, gt, tol_px=10) == 0.5
  assert lane_point_accuracy(sparse, gt, tol_px=9.9) == 0.25
  assert lane_point_accuracy(gt, gt, tol_px=0) == 1


def test_counts_hand_computed():
  gts = [vertical(100), vertical(300)]
  c = lane_counts([vertical(100), vertical(350), vertical(110)], gts)  # a miss and a duplicate
  assert c == LaneCounts(tp=1, n_pred=3, n_gt=2)
  assert (c.precision, c.recall, c.f1) == pytest.approx((1 / 3, 1 / 2, 2 / 5))
  assert lane_counts(gts, gts).f1 == 1


def test_matching_is_one_to_one_and_maximal():
  # A is within tolerance of both gt lanes, B only of the first: the best pairing matches both
  c = lane_counts([vertical(108), vertical(90)], [vertical(100), vertical(115)])
  assert c.tp == 2


def test_counts_accumulate_and_empty_frames():
  total = lane_counts([], [vertical(0)]) + lane_counts([vertical(0)], []) + lane_counts([], [])
  assert total == LaneCounts(0, 1, 1) and total.f1 == 0 and total.precision == 0
  empty = LaneCounts(0, 0, 0)
  assert math.isnan(empty.precision) and math.isnan(empty.recall) and math.isnan(empty.f1)


def test_lateral_error():
  x = np.arange(0.0, 51.0, 5.0)
  gt = np.stack([x, np.zeros_like(x), np.zeros_like(x)], axis=1)
  pred = np.stack([x, 0.1 * x, np.ones_like(x)], axis=1)[x <= 30][::-1]  # reaches 30 m only, unsorted
  np.testing.assert_allclose(lateral_error(pred, gt), [1.0, 2.0, np.nan])
  np.testing.assert_allclose(lateral_error(gt, gt, distances=[0.0, 50.0, 60.0]), [0, 0, np.nan])


def test_bad_input():
  with pytest.raises(ValueError, match=r"pred lane must be a non-empty \(K, 2\)"):
    lane_point_accuracy(np.zeros((3, 3)), vertical(0))
  with pytest.raises(ValueError, match=r"gt must be a non-empty \(N, 3\)"):
    lateral_error(np.zeros((3, 3)), np.zeros((3, 2)))
