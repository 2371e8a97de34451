"""Ground truth -> training targets -> ideal raw outputs -> the daemon's decoding -> fair val's scoring is lossless:
a student that learnt its targets exactly scores perfectly, so a dead head is a training problem, not a decoding one."""
import dataclasses

import numpy as np

from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.model_io import OUTPUTS
from selfdrive.modeld_fair.outputs import decode_outputs
from tools.fair.data.cache import frame_ground_truth
from tools.fair.data.targets import sample_targets
from tools.fair.samples import sample_paths
from tools.fair.sim.gt import load_segment_scene
from tools.fair.val import Scores, score_segment


def test_targets_decode_and_score_perfectly():
  seg = next(p for p in sample_paths() if "cut_in" in p.name)
  scene = load_segment_scene(seg)
  outs = []
  for f in range(0, 100, 20):
    g = frame_ground_truth(scene, f, MEDMODEL, 1.0, instance=False)
    t = sample_targets(dict(g, box_depth=g["box_pos"][:, 0]))
    raw = {k: np.zeros(shape, np.float32) for k, (shape, _) in OUTPUTS.items()}
    raw["depth"][0] = t["depth"]
    raw["obj_heatmap"][0], raw["obj_box"][0] = t["obj_heatmap"], t["obj_box"]
    raw["obj_depth"][0] = np.maximum(t["obj_depth"], 1e-3)
    raw["lanes"][0, :, :, :2], raw["lane_prob"][0], raw["ego"][0, :6] = t["lanes"], t["lane_exists"], t["ego"]
    outs.append(dataclasses.replace(decode_outputs(raw), frame_id=f))
  scores = Scores()
  score_segment(scores, seg, outs, stride=1)
  r = scores.result()
  assert r["det_ap"] == 1.0 and r["det_ap50"] == 1.0
  assert r["lead_frames"] > 0 and r["lead_detection_rate"] == 1.0 and r["lead_dist_mae_m"] < 1e-3
  assert r["lane_f1"] == 1.0 and r["lane_lat_err_20m"] < 0.01
  assert r["ego_speed_mae"] < 1e-4 and r["depth_abs_rel"] < 1e-6
  # the goal metrics
  assert r["det_vehicle_ap50_80m"] == 1.0 and r["det_per_class_ap50"]["vehicle"] == 1.0
  assert r["lead_dist_median_rel"] < 1e-4 and r["ego_speed_rel"] < 1e-5
  assert r["ego_lane_frames"] == 5 and r["ego_lane_20m_rate"] == 1.0
