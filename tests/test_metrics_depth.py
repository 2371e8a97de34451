import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tools.fair.bench.metrics import depth_metrics

positive = arrays(np.float64, 16, elements=st.floats(0.5, 60.0))


def test_hand_computed():
  gt = np.array([2.0, 4.0, 10.0, 100.0, np.nan])  # 100 m is beyond max_depth, NaN not finite
  pred = np.array([1.0, 4.0, 15.0, 5.0, 5.0])
  m = depth_metrics(pred, gt)
  assert m.n_valid == 3
  assert m.abs_rel == pytest.approx(1 / 3)
  assert m.sq_rel == pytest.approx(1.0)
  assert m.rmse == pytest.approx(math.sqrt(26 / 3))
  assert m.rmse_log == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(1.5) ** 2) / 3))
  assert (m.delta1, m.delta2, m.delta3) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_perfect_and_alignment():
  gt = np.array([[2.0, 4.0], [6.0, 9.0]])
  for pred, align in ((gt, None), (gt / 7, "median"), (3 * gt - 1, "lstsq")):
    m = depth_metrics(pred, gt, align=align)
    assert (m.abs_rel, m.sq_rel, m.rmse, m.rmse_log) == pytest.approx((0, 0, 0, 0), abs=1e-12)
    assert (m.delta1, m.delta2, m.delta3, m.n_valid) == (1, 1, 1, 4)


def test_prediction_clipped_after_alignment():
  m = depth_metrics([100.0, 0.0], [50.0, 1.0], max_depth=80.0, min_depth=0.5)
  assert m.abs_rel == pytest.approx((30 / 50 + 0.5 / 1) / 2)
  assert np.isfinite(m.rmse_log)


def test_masks_and_nans_excluded():
  gt = np.array([1.0, 2.0, 3.0, 0.0, -1.0])
  pred = np.array([1.0, np.nan, 30.0, 1.0, 1.0])
  m = depth_metrics(pred, gt, valid=[True, True, False, True, True])
  assert m.n_valid == 1 and m.abs_rel == 0


def test_no_valid_pixel_gives_nan():
  m = depth_metrics(np.ones(3), np.full(3, np.nan))
  assert m.n_valid == 0 and all(math.isnan(v) for v in (m.abs_rel, m.rmse, m.delta1))


def test_bad_input():
  with pytest.raises(ValueError, match=r"pred shape \(2, 3\) != gt shape \(3, 2\)"):
    depth_metrics(np.ones((2, 3)), np.ones((3, 2)))
  with pytest.raises(ValueError, match="valid shape"):
    depth_metrics(np.ones(3), np.ones(3), valid=np.ones(2, bool))
  with pytest.raises(ValueError, match="align"):
    depth_metrics(np.ones(3), np.ones(3), align="mean")


@settings(max_examples=40, deadline=None)
@given(positive, positive, st.floats(0.01, 100.0))
def test_median_alignment_is_scale_invariant(pred, gt, k):
  a, b = depth_metrics(pred, gt, align="median"), depth_metrics(k * pred, gt, align="median")
  for x, y in zip(vars(a).values(), vars(b).values()):
    assert x == pytest.approx(y, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(positive, positive, st.floats(0.1, 10.0), st.floats(-5.0, 5.0))
def test_lstsq_alignment_is_affine_invariant(pred, gt, s, t):
  a, b = depth_metrics(pred, gt, align="lstsq"), depth_metrics(s * pred + t, gt, align="lstsq")
  assert a.abs_rel == pytest.approx(b.abs_rel, rel=1e-6, abs=1e-9)
  assert a.rmse == pytest.approx(b.rmse, rel=1e-6, abs=1e-9)
