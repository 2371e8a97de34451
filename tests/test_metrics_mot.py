"""Identity metrics (py-motmetrics) on sequences with known switches."""
import numpy as np
import pytest

from tools.fair.bench.metrics.mot import mot_metrics

A, B = np.array([0, 0, 10, 10.]), np.array([50, 0, 60, 10.])


def seq(pred_ids_per_frame, n=10):
  return [([1, 2], np.stack([A, B]), ids, np.stack([A + 1, B - 1])) for ids in pred_ids_per_frame[:n]]


def test_perfect_tracks():
  m = mot_metrics(seq([[7, 8]] * 10))
  assert (m.idf1, m.id_switches, m.mota, m.frames) == (1.0, 0, 1.0, 10)


def test_swapped_ids_halfway():
  m = mot_metrics(seq([[7, 8]] * 5 + [[8, 7]] * 5))
  assert m.id_switches == 2
  assert m.idf1 == pytest.approx(0.5)       # each truth keeps its best id for half of its frames
  assert m.mota == pytest.approx(1 - 2 / 20)


def test_reacquired_with_a_new_id_after_an_occlusion():
  frames = seq([[7, 8]] * 4) + [([1, 2], np.stack([A, B]), [8], B[None])] * 2 + seq([[9, 8]] * 4)
  m = mot_metrics(frames)
  assert m.id_switches == 1                 # object 1: lost for 2 frames, then id 9 instead of 7
  assert m.idf1 == pytest.approx(2 * 14 / (20 + 18))


def test_a_box_below_the_iou_threshold_is_a_miss():
  far = [([1], A[None], [7], (A + 6)[None])] * 3   # IoU 16 / 184
  m = mot_metrics(far)
  assert m.idf1 == 0.0 and m.mota == pytest.approx(-1.0)
