"""`fair replay` faults: a failed rlog write, a destroyed rlog, bad --max-frames."""
import shutil

import pytest

from tools.fair import files as files_mod
from tools.fair import replay
from tools.fair.cli import main
from tools.fair.sim.cli import write_segment
from tools.fair.sim.world import make_scene
from tests.test_daemon import FakeRunner

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  return write_segment(make_scene(3, 4 / 20, "mici", "highway"), tmp_path_factory.mktemp("sim"), progress=False)


def test_a_failed_rlog_write_into_the_segment_keeps_its_rlog(segment, tmp_path, monkeypatch):
  seg = shutil.copytree(segment, tmp_path / segment.name)
  before = (seg / "rlog.zst").read_bytes()
  real = files_mod.os.replace

  def disk_full(src, dst):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(files_mod.os, "replace", disk_full)
  with pytest.raises(OSError, match="No space"):
    replay.replay_segment(seg, seg, FakeRunner(), video=False, progress=False)
  monkeypatch.setattr(files_mod.os, "replace", real)
  assert (seg / "rlog.zst").read_bytes() == before and not list(seg.glob(".*tmp*"))


def test_replaying_no_frames_is_an_error_and_writes_nothing(segment, tmp_path, capsys):
  seg = shutil.copytree(segment, tmp_path / segment.name)
  (seg / "rlog.zst").write_bytes(b"\x00" * 64)   # destroyed: no camera state for any frame
  out = tmp_path / "out"
  assert main(["replay", str(seg), "--out", str(out), "--no-video", "--quiet"]) == 2
  err = capsys.readouterr().err.strip()
  assert "0 frames replayed" in err.splitlines()[-1] and "Traceback" not in err
  assert not (out / "rlog.zst").exists()


@pytest.mark.parametrize("n", ["-5", "0"])
def test_max_frames_must_be_positive(segment, tmp_path, capsys, n):
  with pytest.raises(SystemExit) as e:
    main(["replay", str(segment), "--out", str(tmp_path), "--max-frames", n])
  assert e.value.code == 2 and "--max-frames" in capsys.readouterr().err
