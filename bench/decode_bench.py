#!/usr/bin/env python3
"""Decode-to-NV12 speed of tools.fair.routes on ONE core, for comma four and comma 3/3X sizes.

Generates a segment of moving, textured synthetic road content per size with SegmentWriter
(encoding uses every core), then pins itself to one core (os.sched_setaffinity) and times:
  decode  PyAV/FFmpeg HEVC decode alone (lower bound)
  nv12    Segment.frames(): decode + copy into openpilot's padded NV12 buffer + log matching
Writes a markdown table to docs/benchmarks/decode.md (and prints it).

  .venv/bin/python bench/decode_bench.py [--frames 100] [--out docs/benchmarks/decode.md]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfdrive.modeld_fair.camera import MICI_ROAD, TICI_ROAD, CameraModel  # noqa: E402
from bench.common import header, pin_one_core  # noqa: E402
from tools.fair.routes import Segment, SegmentWriter  # noqa: E402


def _smooth_noise(rng, size: int, cell: int, sigma: float) -> np.ndarray:
  """size x size Gaussian noise of feature size `cell` px, bilinearly interpolated."""
  m = size // cell + 2
  g = rng.normal(0, sigma, (m, m))
  t = np.arange(size) / cell
  i, a = t.astype(int), (t % 1.0)[:, None]
  rows = g[i] * (1 - a) + g[i + 1] * a
  return rows[:, i] * (1 - a.T) + rows[:, i + 1] * a.T


def road_frames(camera: CameraModel, n: int, seed: int = 0):
  """Moving synthetic road: perspective-mapped asphalt texture with dashed lanes, textured sky band."""
  rng = np.random.default_rng(seed)
  w, h, f = camera.width, camera.height, camera.focal
  # multi-scale smooth noise texture (1 texel = 2 cm on the ground), like worn asphalt with patches
  tex = sum(_smooth_noise(rng, 1024, k, s) for k, s in ((4, 12), (16, 16), (128, 24)))
  tex = np.clip(110 + tex, 0, 255).astype(np.uint8)
  sky = np.clip(_smooth_noise(rng, max(h, w + 64), 16, 30)[:h, :w + 64] + 150, 0, 255).astype(np.uint8)
  hor = int(camera.cy)
  ys, xs = np.mgrid[hor + 1:h, 0:w].astype(np.float32)
  z = f * 1.22 / (ys - camera.cy)          # metres ahead of each ground pixel
  x = (xs - camera.cx) * z / f             # metres to the right
  gx = (x / 0.02).astype(np.int64) % 1024
  for i in range(n):
    dist = i * 1.0                         # 20 m/s at 20 fps
    gz = ((z + dist) / 0.02).astype(np.int64) % 1024
    ground = tex[gz, gx]
    lane = (np.abs(np.abs(x) - 1.8) < 0.08) & (((z + dist) % 6.0) < 3.0)
    ground = np.where(lane, 235, ground)
    frame = np.empty((h, w, 3), np.uint8)
    frame[:hor + 1] = sky[:hor + 1, i // 2:i // 2 + w, None]
    frame[:hor + 1, :, 2] = np.minimum(255, frame[:hor + 1, :, 2].astype(np.int16) + 40)
    frame[hor + 1:] = ground[..., None]
    yield frame


def write_segment(path: Path, camera: CameraModel, n: int, **kw) -> float:
  with SegmentWriter(path, camera, qcamera=False, **kw) as w:
    for i, rgb in enumerate(road_frames(camera, n)):
      w.write_frame(rgb, calib_rpy=(0.0, 0.03, 0.01), v_ego=20.0)
  return (path / "fcamera.hevc").stat().st_size * 8 * 20 / n / 1e6  # Mbit/s at 20 fps


def best_of(fn, repeat: int) -> float:
  best = float("inf")
  for _ in range(repeat):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def decode_only(path: Path) -> int:
  with av.open(str(path), format="hevc") as c:
    s = c.streams.video[0]
    s.codec_context.thread_count = 1
    return sum(1 for _ in c.decode(s))


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--frames", type=int, default=100)
  ap.add_argument("--repeat", type=int, default=3)
  ap.add_argument("--out", default="docs/benchmarks/decode.md")
  args = ap.parse_args()
  root = Path(__file__).resolve().parents[1]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cases = []
    for cam in (MICI_ROAD, TICI_ROAD):
      for label, kw in (("writer default (crf 22)", {}), ("10 Mbit/s (device-like)", {"bitrate_kbps": 10_000})):
        p = Path(tmp) / f"{cam.name}-{len(cases)}--0"
        mbps = write_segment(p, cam, args.frames, **kw)
        cases.append((cam, label, p, mbps))
    pin_one_core()  # encoding above used every core; decoding is timed on one
    for cam, label, p, mbps in cases:
      seg = Segment(p)
      n = sum(1 for _ in seg.frames())
      assert n == args.frames, n
      t_dec = best_of(lambda: decode_only(p / "fcamera.hevc"), args.repeat)
      t_nv12 = best_of(lambda: sum(1 for _ in Segment(p).frames()), args.repeat)
      t_reuse = best_of(lambda: sum(1 for _ in Segment(p).frames(reuse_buffer=True)), args.repeat)
      rows.append((f"{cam.name} {cam.width}x{cam.height}", label, f"{mbps:.1f}", f"{n / t_dec:.0f}",
                   f"{n / t_nv12:.0f}", f"{n / t_reuse:.0f}", f"{1e3 * (t_nv12 - t_dec) / n:.2f}"))
      print(rows[-1], flush=True)
  lines = [
    header("Segment decode to NV12 (tools.fair.routes), one core",
           f"python bench/decode_bench.py --frames {args.frames}  (best of {args.repeat})").rstrip("\n"),
    f"- PyAV {av.__version__}, FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}",
    f"- content: {args.frames} frames of synthetic moving road texture, HEVC from SegmentWriter (libx265, "
    "preset superfast, GOP 20, no B-frames)",
    "",
    "| camera | encoding | Mbit/s @20 fps | decode only (fps) | Segment.frames (fps) | frames, reuse_buffer (fps) | "
    "NV12 + matching cost (ms/frame) |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    *("| " + " | ".join(r) + " |" for r in rows),
    "",
    "Target: >= 40 fps for 1344x760 on one core.",
    "",
  ]
  text = "\n".join(lines)
  print(text)
  out = root / args.out
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
