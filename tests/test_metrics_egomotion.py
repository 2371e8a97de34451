import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.spatial.transform import Rotation

from tools.fair.bench.metrics import ate_rmse, relative_pose_errors, rotation_angle_deg


def pose(R, t):
  T = np.eye(4)
  T[:3, :3], T[:3, 3] = R, t
  return T


def test_relative_pose_hand_computed():
  gt = np.stack([pose(np.eye(3), [3, 4, 0]), pose(np.eye(3), [0, 0, 0])])
  pred = np.stack([pose(Rotation.from_euler("z", 10, degrees=True).as_matrix(), [3, 4, 1]),
                   pose(Rotation.from_euler("x", -30, degrees=True).as_matrix(), [0, 2, 0])])
  e = relative_pose_errors(pred, gt)
  np.testing.assert_allclose(e.per_pair, [[1, 20, 10], [2, np.nan, 30]])  # static gt: no relative error
  assert (e.trans_m, e.trans_rel_pct, e.rot_deg) == pytest.approx((1.5, 20, 20))
  tuples = relative_pose_errors((pred[:, :3, :3], pred[:, :3, 3]), (gt[:, :3, :3], gt[:, :3, 3]))
  np.testing.assert_array_equal(tuples.per_pair, e.per_pair)
  single = relative_pose_errors(pred[0], gt[0])
  assert (single.trans_m, single.rot_deg) == pytest.approx((1, 10))


def test_rotation_angle_extremes():
  tiny = Rotation.from_rotvec([1e-9, 0, 0]).as_matrix()
  assert rotation_angle_deg(tiny) == pytest.approx(math.degrees(1e-9), rel=1e-6)
  assert rotation_angle_deg(np.diag([1.0, -1.0, -1.0])) == pytest.approx(180)
  assert rotation_angle_deg(np.eye(3)) == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_errors_symmetric_and_perfect(seed):
  rng = np.random.default_rng(seed)
  a = (Rotation.random(3, random_state=rng).as_matrix(), rng.normal(size=(3, 3)))
  b = (Rotation.random(3, random_state=rng).as_matrix(), rng.normal(size=(3, 3)))
  ab, ba = relative_pose_errors(a, b), relative_pose_errors(b, a)
  np.testing.assert_allclose(ab.per_pair[:, [0, 2]], ba.per_pair[:, [0, 2]], rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(relative_pose_errors(a, a).per_pair, np.zeros((3, 3)), atol=1e-6)


def test_ate():
  gt = np.array([[0.0, 0, 0], [2, 0, 0], [0, 1, 0]])
  assert ate_rmse(gt + [1, 0, 0], gt) == pytest.approx(1)
  # scale: s = (2 + 1) / (1 + 1) -> errors 0, 0.5, 0.5
  assert ate_rmse([[0, 0, 0], [1, 0, 0], [0, 1, 0]], gt, align="scale") == pytest.approx(math.sqrt(1 / 6))
  assert ate_rmse(gt / 3, gt, align="scale") == pytest.approx(0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.floats(0.1, 10))
def test_ate_sim3_removes_similarity(seed, s):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=(6, 3))
  gt = s * pred @ Rotation.random(random_state=rng).as_matrix().T + rng.normal(size=3)
  assert ate_rmse(pred, gt, align="sim3") == pytest.approx(0, abs=1e-7 * s)
  noisy = gt + rng.normal(0, 0.1, gt.shape)  # the optimal similarity beats the shift + scale of "scale"
  assert ate_rmse(pred, noisy, align="sim3") <= ate_rmse(pred, noisy, align="scale") + 1e-9


def test_bad_input():
  with pytest.raises(ValueError, match="pred must be"):
    relative_pose_errors(np.eye(3), np.eye(4))
  with pytest.raises(ValueError, match=r"pred shape \(2, 3\) != gt shape \(1, 3\)"):
    relative_pose_errors(np.stack([np.eye(4)] * 2), np.eye(4))
  with pytest.raises(ValueError, match="do not make"):
    relative_pose_errors((np.eye(3), np.zeros(4)), np.eye(4))
  with pytest.raises(ValueError, match="align"):
    ate_rmse(np.zeros((2, 3)), np.zeros((2, 3)), align="se3")
  with pytest.raises(ValueError, match=r"\(N, 3\)"):
    ate_rmse(np.zeros((2, 2)), np.zeros((2, 2)))
