"""`fair replay`: a segment through the daemon's own per-frame code -> rlog, overlay video, latency report."""
import json
from collections import Counter

import av
import numpy as np
import pytest
from openpilot_logging.logreader import LogReader

from cereal_ext import from_events
from selfdrive.modeld_fair import modeld_fair
from selfdrive.modeld_fair.sources import OUTPUT_SERVICE
from tools.fair import replay
from tools.fair.cli import main
from tools.fair.overlay import KEY_H
from tools.fair.routes import Segment
from tools.fair.sim.cli import write_segment
from tools.fair.sim.world import make_scene

from test_daemon import FakeRunner

N_FRAMES = 6


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  scene = make_scene(3, N_FRAMES / 20, "mici", "highway")
  return write_segment(scene, tmp_path_factory.mktemp("sim"), progress=False)


def test_replay_writes_rlog_overlay_and_latency(segment, tmp_path):
  report = replay.replay_segment(segment, tmp_path, FakeRunner(), progress=False)
  assert report.frames == N_FRAMES and report.skipped == 0 and report.reasons == {"none": N_FRAMES}

  events = list(LogReader(str(tmp_path / "rlog.zst")))  # stock openpilot reader
  times = [e.logMonoTime for e in events]
  assert times == sorted(times)
  inputs = Counter(e.which() for e in Segment(segment).events)
  assert Counter(e.which() for e in events) == inputs + Counter({OUTPUT_SERVICE: N_FRAMES})
  outs = from_events(events)
  states = {e.roadCameraState.frameId: e.logMonoTime for e in events if e.which() == "roadCameraState"}
  assert [o.frame_id for _, o in outs] == sorted(states)
  assert all(o.valid and o.depth is not None for _, o in outs)
  assert all(t == states[o.frame_id] for t, o in outs)  # logged at its frame's camera-state time, after it
  for e in events:
    if e.which() == OUTPUT_SERVICE:
      assert e.valid

  with av.open(str(tmp_path / "overlay.mp4")) as c:
    frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  # model | ground truth, 3 rows, a header strip above, the class legend and depth colour bar below
  assert len(frames) == N_FRAMES and frames[0].shape == (768 + 3 * KEY_H, 1024, 3)
  assert frames[0].std() > 10

  data = json.loads((tmp_path / "latency.json").read_text())
  assert set(data["stages"]) == {"warp", "run", "decode", "serialize", "publish", "overhead", "step"}
  assert all(s["p99"] >= s["p50"] >= 0 for s in data["stages"].values())
  assert data["daemon_fps"] > 0 and data["frames"] == N_FRAMES
  md = (tmp_path / "latency.md").read_text()
  assert "| warp |" in md and "frames/s" in md


def test_replay_runs_the_daemons_own_step(segment, tmp_path, monkeypatch):
  assert replay.run_once is modeld_fair.run_once  # the daemon's loop body itself, not a copy
  calls = []
  monkeypatch.setattr(replay, "run_once", lambda *a: calls.append(1) or modeld_fair.run_once(*a))
  runner = FakeRunner()
  replay.replay_segment(segment, tmp_path, runner, video=False, max_frames=3, progress=False)
  assert len(calls) == 3 and len(runner.inputs) == 3
  # the first frame's input repeats the frame: the daemon's history starts with it
  assert np.array_equal(runner.inputs[0][0, :6], runner.inputs[0][0, 6:])
  assert not (tmp_path / "overlay.mp4").exists()


def test_replay_reports_faults_per_frame(segment, tmp_path):
  runner = FakeRunner(fault="nan")
  report = replay.replay_segment(segment, tmp_path, runner, video=False, progress=False)
  assert report.reasons == {"nonFiniteOutput": N_FRAMES}
  outs = from_events(LogReader(str(tmp_path / "rlog.zst")))
  assert {o.invalid_reason for _, o in outs} == {"nonFiniteOutput"}


def test_cli_replay_with_the_bundled_model(segment, tmp_path, capsys):
  """End to end with the real runner (onnxruntime) and the real output decoding."""
  out = tmp_path / "out"
  assert main(["replay", str(segment), "--out", str(out), "--runtime", "onnxruntime", "--max-frames", "2",
               "--no-video"]) == 0
  assert "| run |" in capsys.readouterr().out
  outs = from_events(LogReader(str(out / "rlog.zst")))
  assert len(outs) == 2 and all(o.valid and o.model_execution_time > 0 for _, o in outs)
  assert outs[0][1].model_id and len(outs[0][1].model_hash) == 32


def test_cli_replay_needs_out_or_live(segment, capsys):
  assert main(["replay", str(segment)]) == 2
  assert "--out" in capsys.readouterr().err
