"""`fair sim`: write a simulated drive as a real openpilot segment folder plus its scene file."""
from __future__ import annotations

import argparse
from pathlib import Path


from selfdrive.modeld_fair.camera import DEVICE_CAMERAS
from tools.fair.progress import progress_bar
from tools.fair.routes import SegmentWriter
from tools.fair.sim.render import render_frame
from tools.fair.sim.scenarios import SCENARIOS
from tools.fair.sim.scene import Scene
from tools.fair.sim.world import make_scene


def segment_name(scene: Scene, segment_num: int = 0) -> str:
  """Folder name of a simulated segment ("-dr": domain-randomised); `--N` is the segment number, as in openpilot routes."""
  dr = "-dr" if scene.knobs.randomise else ""
  return f"fairsim-{scene.camera}-{scene.scenario}{dr}-s{scene.seed}--{segment_num}"


def write_segment(scene: Scene, out_dir, progress: bool = True, overwrite: bool = False) -> Path:
  """Render every frame of `scene` and write `out_dir/<segment_name>/` (rlog.zst, fcamera.hevc,
  qcamera.ts, scene.json). Returns the segment folder."""
  path = Path(out_dir) / segment_name(scene)
  camera = scene.device_camera   # the device's camera, with a randomised scene's focal length
  ego = scene.ego
  with SegmentWriter(path, DEVICE_CAMERAS[scene.camera], fps=round(scene.fps), overwrite=overwrite) as writer:
    for f in progress_bar(range(scene.n_frames), desc=path.name, unit="frame", disable=not progress):
      # carState.yawRate is left-positive (openpilot's vehicle frame); the scene's is right-positive (z down)
      writer.write_frame(render_frame(scene, f, camera).rgb, calib_rpy=scene.calib.rpy, height=scene.calib.height,
                         v_ego=float(ego.v[f]), a_ego=float(ego.a[f]), yaw_rate=-float(ego.yaw_rate[f]),
                         trans=ego.trans[f], rot=ego.rot[f])
  scene.save(path / "scene.json")
  return path


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--out", required=True, type=Path, help="folder to write the segment folder into")
  p.add_argument("--seconds", type=float, default=10.0, help="length of the drive (default 10)")
  p.add_argument("--seed", type=int, default=0, help="the same seed reproduces the segment bit for bit")
  p.add_argument("--camera", choices=sorted(DEVICE_CAMERAS), default="tici",
                 help="tici: comma 3/3X 1928x1208; mici: comma four 1344x760")
  p.add_argument("--scenario", choices=sorted(SCENARIOS), default="default", help="see docs/scene_format.md")
  p.add_argument("--randomise", action="store_true",
                 help="domain randomisation: random textures, lighting, camera height/angles/focal, noise, blur, JPEG")
  p.add_argument("--overwrite", action="store_true", help="replace an existing segment folder")


def run(args: argparse.Namespace) -> int:
  scene = make_scene(args.seed, args.seconds, args.camera, args.scenario, randomise=args.randomise)
  print(write_segment(scene, args.out, overwrite=args.overwrite))
  return 0
