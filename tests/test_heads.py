"""Every published head end to end: ground truth -> training targets -> perfect outputs -> the daemon's decoding
-> fair val's scoring gives perfect scores, and the lane targets supervise every point the daemon publishes."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.model_io import LANE_X, OUTPUTS
from selfdrive.modeld_fair.outputs import decode_outputs
from tools.fair.data.cache import frame_ground_truth
from tools.fair.data.targets import lane_targets, sample_targets
from tools.fair.sim.gt import load_segment_scene
from tools.fair.val import Scores, score_segment

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "fairsim-tici-cut_in-s1--0"


def _perfect_raw(t: dict) -> dict:
  """The raw tensors of a student whose every output equals the targets."""
  raw = {k: np.zeros(shape, np.float32) for k, (shape, _) in OUTPUTS.items()}
  raw["depth"][0] = np.where(t["depth"] > 0, t["depth"], 1.0)
  seg = t["seg"]
  rows, cols = np.nonzero(seg < raw["seg_logits"].shape[1])
  raw["seg_logits"][0, seg[rows, cols], rows, cols] = 10.0
  raw["obj_heatmap"][0], raw["obj_box"][0] = t["obj_heatmap"], t["obj_box"]
  raw["obj_depth"][0] = np.where(t["obj_depth"] > 0, t["obj_depth"], 1.0)
  raw["lanes"][0, :, :, :2], raw["lane_prob"][0], raw["ego"][0, :6] = t["lanes"], t["lane_exists"], t["ego"]
  return raw


def test_ground_truth_round_trip_scores_perfectly():
  scene = load_segment_scene(SAMPLE)
  outs = []
  for f in range(0, 200, 40):
    g = frame_ground_truth(scene, f, MEDMODEL, 1.0, instance=False)   # the frame fair val scores against
    n = int(g["box_count"])
    t = sample_targets({"depth": g["depth"].astype(np.float32), "semantic": g["semantic"], "box_xyxy": g["box_xyxy"][:n],
                        "box_cls": g["box_cls"][:n].astype(np.int64), "box_depth": g["box_pos"][:n, 0],
                        "lanes": g["lanes"], "lane_visible": g["lane_visible"], "lane_exists": g["lane_exists"],
                        "ego": g["ego"]})
    outs.append(replace(decode_outputs(_perfect_raw(t)), frame_id=f))
  s = Scores()
  score_segment(s, SAMPLE, outs, stride=1)
  r = s.result()
  assert r["frames"] == 5 and r["depth_abs_rel"] < 0.01
  assert r["det_per_class_ap50"]["vehicle"] == pytest.approx(1) and r["det_vehicle_ap50_80m"] == pytest.approx(1)
  assert r["lead_frames"] >= 3 and r["lead_detection_rate"] == 1 and r["lead_dist_median_rel"] == 0
  assert r["lane_f1"] == 1 and r["ego_lane_frames"] == 5 and r["ego_lane_20m_rate"] == 1
  assert r["ego_speed_mae"] == 0 and r["ego_yaw_rate_mae"] == 0 and r["ego_speed_rel"] == 0


def test_lane_targets_fill_the_points_between_and_below_the_dashes():
  # a straight-then-curving line seen only on three dashes from 6.75 m on: the daemon publishes all 33 points,
  # so every point up to the farthest seen one is supervised (before the fix, only the dashes were)
  y = (1.8 + 0.002 * LANE_X ** 2).astype(np.float32)
  lanes = np.zeros((4, 33, 2), np.float32)
  lanes[1, :, 0] = y
  seen = np.zeros((4, 33), np.uint8)
  seen[1, [6, 7, 8, 11, 12, 16]] = 1
  t = lane_targets(np.where(seen[..., None] > 0, lanes, 0), seen, np.array([0, 1, 0, 0]))
  assert t["lane_valid"][1].tolist() == [1.0] * 17 + [0.0] * 16 and not t["lane_valid"][[0, 2, 3]].any()
  assert t["lanes"][1, :6, 0] == pytest.approx([y[6]] * 6)                    # held below the image
  assert t["lanes"][1, 9:11, 0] == pytest.approx(np.interp(LANE_X[9:11], LANE_X[[8, 11]], y[[8, 11]]))
  assert t["lanes"][1, [6, 7, 8, 11, 12, 16], 0] == pytest.approx(y[[6, 7, 8, 11, 12, 16]])
  # a line seen at one point only has no direction: unsupervised
  one = seen.copy()
  one[1] = 0
  one[1, 10] = 1
  assert not lane_targets(lanes, one, np.array([0, 1, 0, 0]))["lane_valid"].any()
