import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tools.fair.bench.metrics import flow_metrics


def test_hand_computed():
  gt = np.array([[[3.0, 4.0], [0.0, 0.0], [100.0, 0.0]]])
  pred = np.array([[[3.0, 4.0], [4.0, 0.0], [104.0, 0.0]]])
  m = flow_metrics(pred, gt)
  assert (m.epe, m.fl_all, m.n_valid) == pytest.approx((8 / 3, 1 / 3, 3))  # 4 px on a 100 px flow is no outlier


def test_perfect_valid_mask_and_nans():
  gt = np.arange(24.0).reshape(3, 4, 2)
  assert flow_metrics(gt, gt) == flow_metrics(gt, gt, valid=np.ones((3, 4), bool))
  assert flow_metrics(gt, gt).epe == 0
  pred = gt + 10
  pred[0, 0] = np.nan
  valid = np.zeros((3, 4), bool)
  valid[:, :2] = True
  m = flow_metrics(pred, gt, valid)
  assert m.n_valid == 5 and m.epe == pytest.approx(10 * math.sqrt(2))
  empty = flow_metrics(pred, gt, np.zeros((3, 4), bool))
  assert empty.n_valid == 0 and math.isnan(empty.epe) and math.isnan(empty.fl_all)


def test_bad_input():
  with pytest.raises(ValueError, match=r"pred shape \(2, 2, 2\) != gt shape \(2, 3, 2\)"):
    flow_metrics(np.zeros((2, 2, 2)), np.zeros((2, 3, 2)))
  with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
    flow_metrics(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)))
  with pytest.raises(ValueError, match="valid shape"):
    flow_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), np.ones((2, 2, 2), bool))


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (3, 5, 2), elements=st.floats(-50, 50)))
def test_zero_flow_epe_is_mean_gt_magnitude(gt):
  m = flow_metrics(np.zeros_like(gt), gt)
  mag = np.linalg.norm(gt, axis=-1)
  assert m.epe == pytest.approx(mag.mean(), abs=1e-12)
  assert m.fl_all == np.mean(mag > 3)  # for zero flow EPE = |gt| > 5 % of it whenever it is > 0
