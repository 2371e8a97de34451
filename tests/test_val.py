"""`fair val` and its scoring module: known errors give known numbers; ground truth scores perfectly."""
import json

import numpy as np
import pytest

from cereal_ext.fair import EgoMotion, FairObject, FairOutput, LaneLine, Lanes
from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.classes import CLASS_ID
from selfdrive.modeld_fair.model_io import OBJECT_SEMANTIC_IDS
from selfdrive.modeld_fair.runner import MODEL_DIR
from tools.fair.cli import main
from tools.fair.data.cache import frame_ground_truth
from tools.fair.data.targets import sample_targets
from tools.fair.samples import sample_paths
from tools.fair.sim.gt import load_segment_scene
from tools.fair.val import Scores, lead_of, resolve_model, score_segment

CAR, PED = CLASS_ID["vehicle"], CLASS_ID["pedestrian"]


def test_depth_by_distance_band():
  s = Scores()
  gt = np.array([5.0, 5.0, 15.0, 30.0, 60.0])
  s.depth(gt * np.array([1.1, 1.1, 1.0, 1.0, 1.0]), gt)
  r = s.result()
  assert r["depth_by_distance"]["0-10 m"]["abs_rel"] == pytest.approx(0.1)
  assert [r["depth_by_distance"][b]["abs_rel"] for b in ("10-20 m", "20-40 m", "40-80 m")] == [0, 0, 0]
  assert r["depth_abs_rel"] == pytest.approx(0.04) and r["depth_cells"] == 5


def test_lead_rate_distance_error_and_false_leads():
  s = Scores()
  s.lead(20.0, 22.0)
  s.lead(40.0, None)     # missed
  s.lead(None, 10.0)     # a lead where there is none
  s.lead(None, None)
  r = s.result()
  assert (r["lead_frames"], r["lead_detection_rate"], r["lead_false"]) == (2, 0.5, 1)
  assert r["lead_dist_mae_m"] == pytest.approx(2.0) and r["lead_dist_rel"] == pytest.approx(0.1)


def test_lead_is_the_nearest_vehicle_in_the_ego_lane():
  dist, lat = np.array([30.0, 12.0, 8.0, 25.0, np.nan]), np.array([0.5, 3.0, 0.0, -1.0, 0.0])
  ids = np.array([CAR, CAR, PED, CAR, CAR])
  assert lead_of(dist, lat, ids) == 25.0          # 12 m is in the next lane, 8 m is a pedestrian
  assert lead_of(dist[:3], lat[:3], ids[:3]) == 30.0
  assert lead_of(dist[1:3], lat[1:3], ids[1:3]) is None


def test_ego_and_detection_by_distance():
  s = Scores()
  s.ego(np.array([10.5, 0, 0, 0, 0, 0.01]), np.array([10.0, 0, 0, 0, 0, 0.03]))
  boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 70]], np.float64)
  ids, gt_dist = np.array([CAR, PED]), np.array([15.0, 50.0])
  # both found, but the car is placed in the wrong band: the 10-20 m band misses it, 40-80 m is perfect
  s.detections(boxes, ids, boxes, ids, [0.9, 0.8], gt_dist=gt_dist, dist=np.array([25.0, 50.0]))
  r = s.result()
  assert r["ego_speed_mae"] == pytest.approx(0.5) and r["ego_yaw_rate_mae"] == pytest.approx(0.02)
  assert r["det_ap50"] == pytest.approx(1.0) and r["det_per_class"] == pytest.approx({"vehicle": 1.0, "pedestrian": 1.0})
  assert r["det_by_distance"]["10-20 m"]["ap50"] == 0.0 and r["det_by_distance"]["40-80 m"]["ap50"] == pytest.approx(1)
  assert "0-10 m" not in r["det_by_distance"]


def _oracle(segment, f: int) -> FairOutput:
  """A published output that is the ground truth itself."""
  g = frame_ground_truth(load_segment_scene(segment), f, MEDMODEL, 1.0, instance=False)
  t = sample_targets({k: g[k] for k in ("depth", "semantic", "lanes", "lane_visible", "lane_exists", "ego")})
  n = int(g["box_count"])
  objs = [FairObject(OBJECT_SEMANTIC_IDS[int(c)], 1.0, tuple(map(float, b)), tuple(map(float, p)), (0.0, 0.0, 0.0))
          for b, c, p in zip(g["box_xyxy"][:n], g["box_cls"][:n], g["box_pos"][:n])]
  lines = [LaneLine(float(e), t["lanes"][k, :, 0], t["lanes"][k, :, 1], np.ones(33, np.float32), np.ones(33, np.float32))
           for k, e in enumerate(t["lane_exists"])]
  ego = t["ego"].astype(float)
  return FairOutput(frame_id=f, depth=np.where(t["depth"][0] > 0, t["depth"][0], np.inf), segmentation=t["seg"],
                    objects=objs, lanes=Lanes(lines), ego_motion=EgoMotion(tuple(ego[:3]), tuple(ego[3:]), (1.0,) * 3,
                                                                                   (1.0,) * 3))


def test_ground_truth_as_the_prediction_scores_perfectly():
  seg = sample_paths()[0]  # tici cut_in: the cut-in car is the lead by frame 100
  s = Scores()
  score_segment(s, seg, [_oracle(seg, 0), _oracle(seg, 1), _oracle(seg, 100)], stride=2)
  r = s.result()
  assert r["frames"] == 2
  assert r["depth_abs_rel"] == 0 and r["depth_delta1"] == 1 and r["miou"] == 1
  assert r["det_ap50"] == pytest.approx(1) and r["lane_f1"] == 1
  assert r["lane_lat_err_20m"] < 0.01  # ground truth skips hidden points: interpolated across them
  assert r["lead_detection_rate"] == 1 and r["lead_dist_mae_m"] == 0 and r["ego_speed_mae"] == 0


def test_fair_val_on_a_sample_writes_tables_and_plots(tmp_path, capsys):
  seg = sample_paths()[1]
  assert main(["val", str(MODEL_DIR), str(seg), "--out", str(tmp_path), "--max-frames", "4",
               "--stride", "2"]) == 0
  r = json.loads((tmp_path / "val.json").read_text())
  assert r["model_id"] and r["all"]["frames"] == 2 and r[seg.name]["frames"] == 2
  assert 0 < r["all"]["depth_abs_rel"] < 1 and 0 <= r["all"]["miou"] <= 1 and set(r["all"]["iou"]) >= {"road", "sky"}
  text = capsys.readouterr().out
  for header in ("| depth | AbsRel | δ1 | RMSE (m) | cells |", "| class | IoU |", "| lanes | F1 |", "| ego |", "0-10 m"):
    assert header in text
  assert (tmp_path / "val.md").read_text().startswith("# fair val")
  assert all((tmp_path / p).stat().st_size > 1000 for p in ("confusion.png", "error_vs_distance.png", "pr_curves.png"))


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
  seg = sample_paths()[1]
  for argv, message in ((["val", str(tmp_path), str(seg)], "expected a .onnx"),
                        (["val", str(MODEL_DIR), str(tmp_path)], "no scene.json"),
                        (["val", str(MODEL_DIR), str(seg), "--stride", "0"], "--stride must be >= 1")):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
  assert resolve_model(MODEL_DIR) == resolve_model(MODEL_DIR / "student.onnx") == MODEL_DIR / "student.onnx"
