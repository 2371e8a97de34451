import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import confusion_matrix as sk_confusion_matrix, jaccard_score

from tools.fair.bench.metrics import confusion_matrix, segmentation_metrics


def test_hand_computed():
  gt = np.array([[0, 0, 1], [1, 2, 255]])
  pred = np.array([[0, 1, 1], [1, 2, 0]])
  conf = confusion_matrix(pred, gt, 4)
  np.testing.assert_array_equal(conf, [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
  m = segmentation_metrics(conf)
  np.testing.assert_allclose(m.iou, [1 / 2, 2 / 3, 1, np.nan])  # class 3 in neither: NaN
  assert m.miou == pytest.approx(13 / 18)
  assert m.pixel_accuracy == pytest.approx(4 / 5)


def test_perfect_and_empty():
  labels = np.array([0, 1, 2, 2])
  m = segmentation_metrics(confusion_matrix(labels, labels, 3))
  assert m.miou == 1 and m.pixel_accuracy == 1
  empty = segmentation_metrics(np.zeros((3, 3)))
  assert np.isnan(empty.miou) and np.isnan(empty.pixel_accuracy)


def test_matches_sklearn():
  rng = np.random.default_rng(0)
  for k in (2, 5, 19):
    gt, pred = rng.integers(0, k, 500), rng.integers(0, k, 500)
    pred[pred == k - 1] = 0  # the last class is never predicted (IoU 0); every class is in gt
    conf = confusion_matrix(pred, gt, k)
    np.testing.assert_array_equal(conf, sk_confusion_matrix(gt, pred, labels=range(k)))
    np.testing.assert_allclose(segmentation_metrics(conf).iou,
                               jaccard_score(gt, pred, labels=range(k), average=None, zero_division=0))


def test_bad_input():
  with pytest.raises(ValueError, match=r"pred shape \(3,\) != gt shape \(2,\)"):
    confusion_matrix(np.zeros(3), np.zeros(2), 2)
  with pytest.raises(ValueError, match=r"gt labels must lie in \[0, 2\)"):
    confusion_matrix(np.zeros(2), np.array([0, 7]), 2)
  with pytest.raises(ValueError, match="pred labels"):
    confusion_matrix(np.array([0, 255]), np.array([0, 1]), 2)
  with pytest.raises(ValueError, match="square"):
    segmentation_metrics(np.zeros((2, 3)))



@settings(max_examples=50, deadline=None)
@given(st.data())
def test_confusion_matrices_add_over_frames(data):
  n1, n2 = data.draw(st.integers(0, 30)), data.draw(st.integers(0, 30))
  frames = [(data.draw(arrays(np.int64, n, elements=st.integers(0, 3))),
             data.draw(arrays(np.int64, n, elements=st.sampled_from([0, 1, 2, 3, 255])))) for n in (n1, n2)]
  total = sum(confusion_matrix(p, g, 4) for p, g in frames)
  joint = confusion_matrix(np.concatenate([p for p, _ in frames]), np.concatenate([g for _, g in frames]), 4)
  np.testing.assert_array_equal(total, joint)
  assert total.sum() == sum(np.sum(g != 255) for _, g in frames)
