import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from tools.fair.bench.metrics import boundary_f, j_and_f, region_iou, tapvid_metrics


def _tapvid_case():
  """2 points x 4 frames. Point 0: always visible, predicted visible, errors 0, 1.5, 3, 20 px.
  Point 1: occluded in frames 2, 3; predicted exactly, but occluded in frames 1, 3."""
  gt = np.zeros((2, 4, 2))
  pred = gt.copy()
  pred[0, :, 0] = [0, 1.5, 3, 20]
  pred[1, 1, 1] = 0.5
  gt_occ = np.array([[0, 0, 0, 0], [0, 0, 1, 1]], bool)
  pred_occ = np.array([[0, 0, 0, 0], [0, 1, 0, 1]], bool)
  return pred, pred_occ, gt, gt_occ


def test_tapvid_hand_computed():
  m = tapvid_metrics(*_tapvid_case())
  assert m.occlusion_accuracy == pytest.approx(6 / 8)
  assert list(m.pts_within.values()) == pytest.approx([3 / 6, 4 / 6, 5 / 6, 5 / 6, 5 / 6])
  assert m.delta_avg == pytest.approx(11 / 15)
  # TP / (6 visible + FP); a visible point predicted visible but too far counts in both
  assert list(m.jaccard.values()) == pytest.approx([2 / 10, 3 / 9, 4 / 8, 4 / 8, 4 / 8])
  assert m.average_jaccard == pytest.approx(61 / 150)


def test_tapvid_query_frames():
  first = tapvid_metrics(*_tapvid_case(), query_frames=[1, 0])  # frames (0: 2, 3) and (1: 1, 2, 3)
  assert first.occlusion_accuracy == pytest.approx(3 / 5)
  assert first.pts_within[4] == pytest.approx(2 / 3)
  strided = tapvid_metrics(*_tapvid_case(), query_frames=[1, 0], query_mode="strided")  # + (0: 0)
  assert strided.occlusion_accuracy == pytest.approx(4 / 6)
  assert strided.pts_within[1] == pytest.approx(2 / 4)


def test_tapvid_perfect_and_scale():
  pred, pred_occ, gt, gt_occ = _tapvid_case()
  m = tapvid_metrics(gt, gt_occ, gt, gt_occ, query_frames=[0, 0])
  assert (m.occlusion_accuracy, m.delta_avg, m.average_jaccard) == (1, 1, 1)
  s = np.array([0.25, 2.0])
  a = tapvid_metrics(pred, pred_occ, gt, gt_occ, scale=s)
  b = tapvid_metrics(pred * s, pred_occ, gt * s, gt_occ)
  assert a == b and a.pts_within[1] == pytest.approx(4 / 6)  # the 1.5 px error becomes 0.375 px


def test_tapvid_bad_input():
  pred, pred_occ, gt, gt_occ = _tapvid_case()
  with pytest.raises(ValueError, match=r"pred_tracks shape \(2, 3, 2\) != gt_tracks shape \(2, 4, 2\)"):
    tapvid_metrics(pred[:, :3], pred_occ, gt, gt_occ)
  with pytest.raises(ValueError, match="query_frames has 1 entries for 2 points"):
    tapvid_metrics(pred, pred_occ, gt, gt_occ, query_frames=[0])
  with pytest.raises(ValueError, match="query_mode"):
    tapvid_metrics(pred, pred_occ, gt, gt_occ, query_frames=[0, 0], query_mode="last")


def _square(top, left, size=10, shape=(20, 20)):
  m = np.zeros(shape, bool)
  m[top:top + size, left:left + size] = True
  return m


def test_region_iou():
  assert region_iou(_square(5, 5), _square(5, 8)) == pytest.approx(70 / 130)
  assert region_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1
  assert region_iou(np.zeros((4, 4)), np.ones((4, 4))) == 0


def test_boundary_f_hand_computed():
  # two 10x10 squares 3 px apart horizontally, 36 boundary pixels each; by symmetry precision = recall.
  # Within 1 px of the other boundary: 8 pixels of the top row, 8 of the bottom one and the 2 pixels of
  # the inner vertical side next to them; within 2 px: 9 + 9 + 4
  gt, pred = _square(5, 5), _square(5, 8)
  assert boundary_f(pred, gt, bound_th=1) == pytest.approx(18 / 36)
  assert boundary_f(pred, gt, bound_th=2) == pytest.approx(22 / 36)
  assert boundary_f(pred, gt, bound_th=3) == 1  # the vertical sides are 3 px apart
  assert boundary_f(gt, gt) == 1


def test_boundary_f_conventions():
  empty, full = np.zeros((20, 20), bool), np.ones((20, 20), bool)
  assert boundary_f(empty, empty) == 1 and boundary_f(full, full) == 1  # the image border is no boundary
  assert boundary_f(empty, _square(5, 5)) == 0 and boundary_f(_square(5, 5), full) == 0
  # default tolerance: ceil(0.008 * hypot(100, 100)) = 2 px
  assert boundary_f(_square(5, 5, 40, (100, 100)), _square(5, 7, 40, (100, 100))) == 1
  assert boundary_f(_square(5, 5, 40, (100, 100)), _square(5, 8, 40, (100, 100))) < 1


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 4))
def test_boundary_f_matches_distance_transform(seed, r):
  """Dilation by the disk == a boundary pixel of the other mask within Euclidean distance r."""
  rng = np.random.default_rng(seed)
  pred, gt = (ndimage.binary_opening(rng.random((24, 32)) < 0.5) for _ in range(2))
  boundary = lambda m: m & ~ndimage.binary_erosion(m, border_value=1)
  bp, bg = boundary(pred), boundary(gt)
  if not bp.any() or not bg.any():
    return
  p = np.mean(ndimage.distance_transform_edt(~bg)[bp] <= r)
  rc = np.mean(ndimage.distance_transform_edt(~bp)[bg] <= r)
  assert boundary_f(pred, gt, bound_th=r) == pytest.approx(2 * p * rc / (p + rc) if p + rc else 0)


def test_j_and_f():
  gt = np.stack([_square(5, 5), _square(5, 5)])
  pred = np.stack([_square(5, 5), _square(5, 8)])
  m = j_and_f(pred, gt, bound_th=1)
  np.testing.assert_allclose(m.j_per_frame, [1, 70 / 130])
  np.testing.assert_allclose(m.f_per_frame, [1, 18 / 36])
  assert m.jf == pytest.approx((m.j + m.f) / 2) and m.j == pytest.approx((1 + 70 / 130) / 2)
  with pytest.raises(ValueError, match="pred shape"):
    j_and_f(pred[:1], gt)
