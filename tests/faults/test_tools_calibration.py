"""One calibration policy for every tool that warps to the model frame: a segment without liveCalibration is
refused with one line (exit 2) and nothing is written; frames before the first liveCalibration use it."""
import shutil

import numpy as np
import pytest

from tools.fair.cli import main
from tools.fair.export.frames import segment_inputs
from tools.fair.labels.pipeline import label_segments
from tools.fair.labels.store import LabelStore
from tools.fair.replay import write_rlog
from tools.fair.routes import NoCalibrationError, Segment, read_events
from tools.fair.sim.cli import write_segment
from tools.fair.sim.world import make_scene
from tests.faults.test_tools_labels import MeanTeacher, _cfg

pytestmark = pytest.mark.faults
REFUSAL = "no liveCalibration in the rlog"


def _drop_calibration(seg, keep=lambda i, ev: False):
  events = read_events(seg / "rlog.zst")
  calibs = [ev for ev in events if ev.which() == "liveCalibration"]
  kept = [ev for ev in events if ev.which() != "liveCalibration" or keep(calibs.index(ev), ev)]
  (seg / "rlog.zst").unlink()
  write_rlog(seg / "rlog.zst", kept, [])


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory):
  seg = write_segment(make_scene(4, 6 / 20, "mici", "highway"), tmp_path_factory.mktemp("nocal"), progress=False)
  _drop_calibration(seg)
  assert Segment(seg).calibration() is None
  return seg


@pytest.mark.parametrize("argv", [
  ["inspect", "{seg}", "--gt", "--out", "{out}/inspect.mp4"],
  ["inspect", "{seg}", "--out", "{out}/frames"],
  ["lanes", "{seg}", "--tracker", "lk", "--init", "gt", "--out", "{out}/store"],
  ["cache", "{seg}", "--out", "{out}/cache"],
  ["flow-train", "{seg}", "--save-pairs", "{out}/pairs.npz"],
], ids=["inspect-gt", "inspect", "lanes", "cache", "flow-train"])
def test_every_tool_refuses_a_segment_without_calibration(uncalibrated, tmp_path, capsys, argv):
  out = tmp_path / "out"
  out.mkdir()
  rc = main([a.format(seg=uncalibrated, out=out) for a in argv] + ["--quiet"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and REFUSAL in err, err
  assert [p for p in out.rglob("*") if p.is_file() and p.name != "cache.json"] == []   # only the cache's settings


def test_label_and_export_frames_refuse_it_too(uncalibrated, tmp_path):
  with pytest.raises(NoCalibrationError, match=REFUSAL):
    label_segments([uncalibrated], {"mean": MeanTeacher()}, LabelStore(tmp_path / "s"), _cfg(), progress=False)
  with pytest.raises(NoCalibrationError, match=REFUSAL):
    segment_inputs([uncalibrated], 2)


def test_frames_before_the_first_calibration_use_it_in_every_tool(tmp_path):
  seg = write_segment(make_scene(5, 8 / 20, "mici", "highway"), tmp_path / "late", progress=False)
  _drop_calibration(seg, keep=lambda i, ev: i > 0)   # the first logged calibration is lost
  s = Segment(seg)
  frames = list(s.frames())
  assert frames[0].calib_rpy is None and frames[-1].calib_rpy is not None
  assert s.warp_calibration(frames[0]) == frames[-1].calib_rpy   # one value in this scene
  shutil.rmtree(tmp_path / "c", ignore_errors=True)
  assert main(["cache", str(seg), "--out", str(tmp_path / "c"), "--quiet"]) == 0
  from safetensors.numpy import load_file
  calib = np.concatenate([load_file(p)["calib"] for p in sorted((tmp_path / "c" / s.content_id).glob("*.safetensors"))])
  assert np.allclose(calib, frames[-1].calib_rpy, atol=1e-6)
