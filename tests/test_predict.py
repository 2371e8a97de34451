"""`fair predict`: frames of any pinhole camera (odd sizes, non-square pixels, video) through the student."""
import json
import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from selfdrive.modeld_fair.nv12 import rgb_to_nv12
from tools.fair.cli import main
from tools.fair.overlay import KEY_H
from tools.fair.predict import Pinhole, camera_view

# CI keeps the shared data folder beside the clone; FAIRPILOT_SHARED points elsewhere
SHARED = Path(os.environ.get("FAIRPILOT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
REAL = SHARED / "data" / "real"


def _road_image(w: int, h: int) -> np.ndarray:
  """Sky over a grey road with two white lines converging to the centre."""
  img = np.full((h, w, 3), (150, 180, 220), np.uint8)
  img[h // 2:] = 90
  for x in (0.25 * w, 0.75 * w):
    cv2.line(img, (int(x), h - 1), (w // 2, h // 2), (255, 255, 255), 3)
  return img


def _report(out: Path) -> dict:
  return json.loads((out / "report.json").read_text())


def test_rgb_to_nv12_odd_size_is_a_clear_error():
  with pytest.raises(ValueError, match="NV12 needs an even width and height, got 1242x375"):
    rgb_to_nv12(np.zeros((375, 1242, 3), np.uint8))


def test_odd_sized_images_run(tmp_path, capsys):
  for w, h in ((1242, 375), (641, 481)):
    cv2.imwrite(str(tmp_path / f"{w}x{h}.png"), _road_image(w, h))
  paths = [str(tmp_path / "1242x375.png"), str(tmp_path / "641x481.png")]
  out = tmp_path / "out"
  assert main(["predict", *paths, "--intrinsics", "721.5,721.5,609.6,172.9", "--out", str(out)]) == 0
  frames = _report(out)["frames"]
  assert [f["size"] for f in frames] == [[1242, 375], [641, 481]] and all(f["valid"] for f in frames)
  assert all(np.isfinite(f["median_depth_m"]) and len(f["lane_probs"]) == 4 for f in frames)
  pngs = sorted(out.glob("*.png"))
  assert [p.name for p in pngs] == ["0000_1242x375.png", "0001_641x481.png"]
  assert cv2.imread(str(pngs[0])).shape == (768 + 3 * KEY_H, 512, 3)  # three model-frame panels + header and keys
  assert "| 1242x375 | 1242x375 | none |" in capsys.readouterr().out


def test_non_square_pixels_keep_every_ray():
  k = Pinhole(fx=800.0, fy=600.0, cx=320.0, cy=200.0)
  rgb = np.zeros((401, 641, 3), np.uint8)
  u, v = 500, 300
  rgb[v - 2:v + 3, u - 2:u + 3] = 255
  view, cam = camera_view(rgb, k)
  assert view.shape[0] % 2 == 0 and view.shape[1] % 2 == 0 and cam.focal == k.fx
  ys, xs = np.nonzero(view[..., 0] > 128)
  # the dot's ray (x/z, y/z) is the same through both cameras
  assert abs((xs.mean() - cam.cx) / cam.focal - (u - k.cx) / k.fx) < 1e-3
  assert abs((ys.mean() - cam.cy) / cam.focal - (v - k.cy) / k.fy) < 2e-3


def test_a_video_is_one_sequence(tmp_path):
  path = tmp_path / "clip.mp4"
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264", rate=20)
    s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
    for i in range(3):
      img = np.roll(_road_image(320, 240), 4 * i, axis=1)
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  out = tmp_path / "out"
  assert main(["predict", str(path), "--intrinsics", "250,250,160,120", "--out", str(out)]) == 0
  assert [f["name"] for f in _report(out)["frames"]] == ["clip-00000", "clip-00001", "clip-00002"]


@pytest.mark.parametrize("argv, message", [
  (["--intrinsics", "1,2,3"], "--intrinsics expects fx,fy,cx,cy"),
  (["--intrinsics", "0,1,2,3"], "focal lengths must be > 0"),
  (["--intrinsics", "1,1,1,1", "--height", "-1"], "--height must be > 0"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
  cv2.imwrite(str(tmp_path / "a.png"), _road_image(64, 48))
  assert main(["predict", str(tmp_path / "a.png"), *argv, "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and "\n" not in err


def test_unreadable_inputs_are_one_line_errors(tmp_path, capsys):
  (tmp_path / "junk.png").write_bytes(b"no image")
  (tmp_path / "junk.mp4").write_bytes(b"no video")
  for name, message in (("missing.png", "no such file"), ("junk.png", "not a readable image"),
                        ("junk.mp4", "not a readable video")):
    assert main(["predict", str(tmp_path / name), "--intrinsics", "1,1,1,1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.skipif(not REAL.is_dir(), reason=f"no real frames at {REAL} (set FAIRPILOT_SHARED)")
def test_real_frames(tmp_path):
  # the comma frame: EON road camera, f = 910 at 1164x874; the dashcam pair's intrinsics are a guess (~65 deg FOV)
  comma, dash = tmp_path / "comma", tmp_path / "dash"
  assert main(["predict", str(REAL / "comma2k19_preview.png"), "--intrinsics", "910,910,582,437", "--height", "1.22",
               "--out", str(comma)]) == 0
  assert main(["predict", str(REAL / "dashcam" / "source.jpg"), str(REAL / "dashcam" / "target.jpg"),
               "--intrinsics", "700,700,446,153", "--out", str(dash)]) == 0
  frames = _report(comma)["frames"] + _report(dash)["frames"]
  assert [f["size"] for f in frames] == [[1164, 874], [892, 307], [895, 315]]
  assert all(f["valid"] and 0.5 < f["median_depth_m"] < 300 for f in frames)
  for png in [*comma.glob("*.png"), *dash.glob("*.png")]:
    assert cv2.imread(str(png))[KEY_H:KEY_H + 256].std() > 10  # the warped frame is there, not a blank panel
