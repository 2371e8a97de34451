"""`fair compare`: modelV2 / radarState / FairModelOutput messages with known errors give those errors back."""
import json
import shutil

import numpy as np
import pytest
from openpilot_logging.cereal import log

from cereal_ext.fair import EgoMotion, FairObject, FairOutput, LaneLine, Lanes, to_event
from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.classes import CLASS_ID
from selfdrive.modeld_fair.model_io import LANE_X
from tools.fair.cli import main
from tools.fair.data.cache import frame_ground_truth
from tools.fair.replay import write_rlog
from tools.fair.routes import Segment
from tools.fair.samples import sample_paths
from tools.fair.sim.gt import load_segment_scene

FRAMES = (100, 110, 120)   # the cut-in car is the lead (cut_in sample)
OP_LANE_ERR, OP_LEAD_ERR, RADAR_LEAD_ERR = 0.3, 2.0, -1.0
FP_LANE_ERR, FP_LEAD_ERR = -0.1, 3.0


def _model_v2(t: int, f: int, lanes_y: np.ndarray, probs, lead: float) -> bytes:
  ev = log.Event.new_message(logMonoTime=t, valid=True)
  m = ev.init("modelV2")
  m.frameId = f
  lines = m.init("laneLines", 4)
  for k in range(4):
    lines[k].x, lines[k].y, lines[k].z = LANE_X.tolist(), lanes_y[k].tolist(), [0.0] * len(LANE_X)
  m.laneLineProbs = [float(p) for p in probs]
  ld = m.init("leadsV3", 3)
  ld[0].prob, ld[0].x, ld[0].y = 0.9, [lead] * 6, [0.0] * 6
  return ev.to_bytes()


def _radar(t: int, lead: float) -> bytes:
  ev = log.Event.new_message(logMonoTime=t, valid=True)
  r = ev.init("radarState")
  r.leadOne.dRel, r.leadOne.yRel, r.leadOne.status = lead, 0.0, True
  return ev.to_bytes()


def _student(t: int, f: int, lanes_y: np.ndarray, probs, lead: float) -> bytes:
  z = np.zeros(len(LANE_X), np.float32)
  lines = [LaneLine(float(p), y.astype(np.float32), z, z + 1, z + 1) for p, y in zip(probs, lanes_y)]
  car = FairObject(CLASS_ID["vehicle"], 0.9, (200.0, 40.0, 260.0, 80.0), (lead, 0.0, 0.0), (0.0, 0.0, 0.0))
  out = FairOutput(frame_id=f, timestamp_eof=t, depth=np.full((32, 64), 20.0, np.float32),
                   segmentation=np.zeros((64, 128), np.uint8), objects=[car], lanes=Lanes(lines),
                   ego_motion=EgoMotion((0.0,) * 3, (0.0,) * 3, (1.0,) * 3, (1.0,) * 3))
  return to_event(out, t).to_bytes()


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  """The cut_in sample's rlog + scene with openpilot and student messages built from ground truth plus known errors."""
  src = sample_paths()[0]
  seg = tmp_path_factory.mktemp("cmp") / "fake|2026-01-01--00-00-00--0"
  seg.mkdir()
  shutil.copy(src / "scene.json", seg / "scene.json")
  scene = load_segment_scene(src)
  events = Segment(src).events
  cam_t = {ev.roadCameraState.frameId: ev.logMonoTime for ev in events if ev.which() == "roadCameraState"}
  extra = []
  for f in FRAMES:
    g = frame_ground_truth(scene, f, MEDMODEL, 1.0, instance=False)
    n = int(g["box_count"])
    pos = g["box_pos"][:n]
    lead = float(pos[(np.abs(pos[:, 1]) < 1.8) & (pos[:, 0] > 0), 0].min())
    y, probs, t = g["lanes"][..., 0].astype(np.float64), g["lane_exists"], cam_t[f]
    extra += [(t + 1, _model_v2(t + 1, f, y + OP_LANE_ERR, probs, lead + OP_LEAD_ERR)),
              (t + 2, _radar(t + 2, lead + RADAR_LEAD_ERR)),
              (t + 3, _student(t + 3, f, y + FP_LANE_ERR, probs, lead + FP_LEAD_ERR))]
  write_rlog(seg / "rlog.zst", events, extra)
  return seg


def test_each_source_against_ground_truth_and_the_student_against_modelv2(segment, tmp_path, capsys):
  assert main(["compare", str(segment), "--out", str(tmp_path)]) == 0
  r = json.loads((tmp_path / "compare.json").read_text())
  assert set(r) == {"openpilot modelV2 vs ground truth", "openpilot radarState vs ground truth",
                    "fairpilot student vs ground truth", "fairpilot student vs openpilot modelV2"}
  op, radar = r["openpilot modelV2 vs ground truth"], r["openpilot radarState vs ground truth"]
  fp, agree = r["fairpilot student vs ground truth"], r["fairpilot student vs openpilot modelV2"]
  assert op["frames"] == radar["frames"] == fp["frames"] == agree["frames"] == len(FRAMES)
  for res, lane, lead in ((op, OP_LANE_ERR, OP_LEAD_ERR), (fp, FP_LANE_ERR, FP_LEAD_ERR),
                          (agree, FP_LANE_ERR - OP_LANE_ERR, FP_LEAD_ERR - OP_LEAD_ERR)):
    for x in (10, 20, 40):
      assert res[f"lane_lat_err_{x}m"] == pytest.approx(abs(lane), abs=0.02)
    assert res["lead_detection_rate"] == 1 and res["lead_dist_mae_m"] == pytest.approx(abs(lead), abs=1e-3)
  assert op["lane_f1"] == 1 and fp["lane_f1"] == 1 and agree["lane_f1"] == 1   # all within the 0.5 m test
  assert radar["lead_dist_mae_m"] == pytest.approx(abs(RADAR_LEAD_ERR), abs=1e-3) and "lane_f1" not in radar
  assert "## openpilot radarState vs ground truth" in capsys.readouterr().out


def test_a_segment_without_those_messages_is_a_one_line_error(capsys):
  assert main(["compare", str(sample_paths()[1])]) == 2
  assert "no modelV2, radarState or FairModelOutput events" in capsys.readouterr().err
