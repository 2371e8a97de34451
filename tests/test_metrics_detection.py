import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tools.fair.bench.metrics import box_iou, detection_ap, lead_distance_error

E = np.zeros((0, 4)), np.zeros(0, int), np.zeros(0)  # an image without predictions


def test_box_iou():
  np.testing.assert_allclose(box_iou([[0, 0, 2, 2], [5, 5, 6, 6]], [[1, 1, 3, 3], [0, 0, 2, 2]]),
                             [[1 / 7, 1], [0, 0]])
  assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_hand_computed():
  # class 0: 3 gt boxes; detections A (TP at IoU 1), B (FP), C (IoU 0.62 with gt 2); class 1: predictions only
  gt = ([[20, 20, 30, 30], [0, 0, 10, 10], [80, 80, 90, 90]], [0, 0, 0])
  pred = ([[20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 6.2], [0, 0, 5, 5]], [0, 0, 0, 1], [0.9, 0.8, 0.7, 0.5])
  r = detection_ap([gt], [pred])
  # IoU <= 0.6: precision 1 up to recall 1/3 (34 points), 2/3 up to 2/3 (33 points) -> 56/101
  # IoU >= 0.65: C is a FP too -> 34/101
  assert r.per_class_ap50[0] == pytest.approx(56 / 101)
  assert r.per_class_ap[0] == pytest.approx((3 * 56 + 7 * 34) / 1010)
  assert math.isnan(r.per_class_ap[1]) and math.isnan(r.per_class_ap50[1])
  assert (r.ap, r.ap50) == pytest.approx((r.per_class_ap[0], r.per_class_ap50[0]))


def test_perfect_and_missed():
  gt = ([[0, 0, 10, 10], [20, 0, 30, 10]], [3, 4])
  r = detection_ap([gt, (np.zeros((0, 4)), [])], [(gt[0], [3, 4], [0.2, 0.3]), E])
  assert (r.ap, r.ap50) == pytest.approx((1, 1))  # precision tp / (tp + fp + eps), as COCOeval
  r = detection_ap([gt], [(gt[0][:1], [3], [1.0])])  # class 4 never predicted
  assert r.per_class_ap == pytest.approx({3: 1, 4: 0}) and r.ap == pytest.approx(0.5)
  assert math.isnan(detection_ap([(np.zeros((0, 4)), [])], [E]).ap)


def test_bad_input():
  with pytest.raises(ValueError, match="gts has 1 images but preds has 2"):
    detection_ap([E[:2]], [E, E])
  with pytest.raises(ValueError, match="image 0"):
    detection_ap([E[:2]], [(np.zeros((2, 4)), [0, 0], [0.5])])


def _random_case(rng, n_images, n_classes, max_gt, max_pred, tied_scores):
  gts, preds = [], []
  for _ in range(n_images):
    xy = rng.uniform(0, 200, (rng.integers(0, max_gt + 1), 2))
    g = np.concatenate([xy, xy + rng.uniform(5, 60, xy.shape)], axis=1)
    gc = rng.integers(0, n_classes, len(g))
    n_near = rng.integers(0, 2 * len(g) + 1)  # jittered copies of gt boxes: IoUs across all thresholds
    src = rng.integers(0, max(len(g), 1), n_near)
    near = g[src] + rng.normal(0, 2, (n_near, 4)) if len(g) else np.zeros((0, 4))
    xy = rng.uniform(0, 200, (rng.integers(0, max_pred + 1), 2))
    far = np.concatenate([xy, xy + rng.uniform(5, 60, xy.shape)], axis=1)
    p = np.concatenate([near, far])
    p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
    pc = np.concatenate([gc[src] if len(g) else np.zeros(0, int), rng.integers(0, n_classes, len(far))])
    pc = np.where(rng.random(len(pc)) < 0.1, rng.integers(0, n_classes, len(pc)), pc)
    s = rng.random(len(p))
    gts.append((g, gc))
    preds.append((p, pc, np.round(s, 1) if tied_scores else s))
  return gts, preds


def _cocoeval(gts, preds, n_classes):
  xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
  anns = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "area": float((b[2] - b[0]) * (b[3] - b[1])),
           "iscrowd": 0} for i, (bs, cs) in enumerate(gts) for b, c in zip(bs, cs)]
  for k, a in enumerate(anns):
    a["id"] = k + 1  # COCOeval needs non-zero ids
  dets = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
          for i, (bs, cs, ss) in enumerate(preds) for b, c, s in zip(bs, cs, ss)]
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1} for i in range(len(gts))], "annotations": anns,
                    "categories": [{"id": k + 1} for k in range(n_classes)]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  prec = ev.eval["precision"][:, :, :, 0, -1]  # area "all", maxDets 100
  per_class = {k: prec[:, :, k][prec[:, :, k] > -1].mean() if (prec[:, :, k] > -1).any() else np.nan
               for k in range(n_classes)}
  return ev.stats[0], ev.stats[1], per_class


@pytest.mark.parametrize("tied_scores", [False, True])
def test_matches_cocoeval(tied_scores):
  rng = np.random.default_rng(1 + tied_scores)
  cases = [_random_case(rng, rng.integers(1, 5), rng.integers(1, 4), 6, 5, tied_scores) for _ in range(25)]
  cases.append(_random_case(rng, 2, 1, 40, 130, tied_scores))  # > 100 detections of a class in an image
  for gts, preds in cases:
    if not sum(len(p[0]) for p in preds):
      continue  # COCO.loadRes cannot take an empty result list
    n_classes = 1 + max([int(c.max()) for _, c in gts if len(c)] + [int(c.max()) for _, c, _ in preds if len(c)])
    ap, ap50, per_class = _cocoeval(gts, preds, n_classes)
    r = detection_ap(gts, preds)
    assert r.ap == pytest.approx(ap, abs=1e-9, nan_ok=True) if ap > -1 else math.isnan(r.ap)
    assert r.ap50 == pytest.approx(ap50, abs=1e-9) if ap50 > -1 else math.isnan(r.ap50)
    for k, v in per_class.items():
      assert r.per_class_ap.get(k, np.nan) == pytest.approx(v, abs=1e-9, nan_ok=True)


def test_lead_distance_error():
  r = lead_distance_error([10.0, 22.0, np.nan, 5.0, 3.0], [10.0, 20.0, 30.0, np.nan, 0.0])
  assert r.n == 2
  assert (r.mean_abs, r.median_abs, r.rmse, r.mean_rel, r.median_rel) == pytest.approx((1, 1, math.sqrt(2), 0.05, 0.05))
  assert math.isnan(lead_distance_error([np.nan], [1.0]).rmse)
  with pytest.raises(ValueError, match="pred shape"):
    lead_distance_error([1.0, 2.0], [1.0])


def test_iou_tie_goes_to_the_last_gt_box_as_in_cocoeval():
  # A overlaps both gt boxes with IoU 9/11 and takes the second; B then takes the first with IoU 1.
  # Had A taken the first, B (IoU 2/3 with the second) would be a FP from threshold 0.7 on.
  gts = [(np.array([[0.0, 0, 10, 10], [2, 0, 12, 10]]), np.array([0, 0]))]
  preds = [(np.array([[1.0, 0, 11, 10], [0, 0, 10, 10]]), np.array([0, 0]), np.array([0.9, 0.8]))]
  r = detection_ap(gts, preds)
  assert r.ap == pytest.approx(_cocoeval(gts, preds, 1)[0], abs=1e-12)
  # both match up to IoU 0.8 (AP 1 at 7 thresholds); above, only B at recall 1/2 (AP 51 * 0.5 / 101)
  assert r.ap == pytest.approx((7 + 3 * 25.5 / 101) / 10)


def test_pr_curve_at_iou_50():
  from tools.fair.bench.metrics.detection import RECALL_THRESHOLDS
  g = np.array([[0, 0, 10, 10], [20, 0, 30, 10.]])
  p = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10.]])   # TP 0.9, FP 0.8, TP 0.7
  a = detection_ap([(g, [1, 1])], [(p, [1, 1, 1], [0.9, 0.8, 0.7])])
  pr = a.per_class_pr50[1]
  assert pr.shape == RECALL_THRESHOLDS.shape
  np.testing.assert_allclose(pr[RECALL_THRESHOLDS <= 0.5], 1.0)
  np.testing.assert_allclose(pr[RECALL_THRESHOLDS > 0.5], 2 / 3)
  assert a.per_class_ap50[1] == pytest.approx(pr.mean())
