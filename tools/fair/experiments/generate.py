"""Many simulated segments for an experiment: varied scenarios, both device cameras, resumable, in parallel.

Segment i gets seed seed0 + i, scenario scenarios[i % S] and camera cameras[(i % S + i // S) % C]:
cameras alternate within each pass over the scenarios and the assignment shifts by one every pass, so every
scenario is seen with every camera once n >= S * C. A segment folder that already holds its rlog and
scene.json is finished (the writer renames the rlog into place last, and scene.json follows it) and is
skipped; a half-written one is rendered again.

Measured on the Intel Xeon 2-core VM (2026-11-27, shared with other jobs): a 5 s segment (100 frames)
takes ~43 s for mici (1344x760) and ~91 s for tici (1928x1208) with one worker.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path


from tools.fair.progress import progress_bar
from tools.fair.sim.cli import segment_name, write_segment
from tools.fair.sim.scenarios import SCENARIOS
from tools.fair.sim.scene import Scene
from tools.fair.sim.world import make_scene

# every named scenario except the geometry test bench (no sensor effects, zero mounting angles)
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s != "straight_flat")
CAMERAS = ("tici", "mici")


@dataclass(frozen=True)
class SegmentSpec:
  """What one generated segment is made from (make_scene's arguments)."""
  seed: int
  seconds: float
  camera: str
  scenario: str
  randomise: bool = False   # domain randomisation (sim/domain.py)

  def scene(self) -> Scene:
    return make_scene(self.seed, self.seconds, self.camera, self.scenario, randomise=self.randomise)


def segment_specs(n: int, seconds: float, seed0: int = 0, cameras=CAMERAS,
                  scenarios=DEFAULT_SCENARIOS, randomise: bool = False) -> list[SegmentSpec]:
  """The specs of segments 0..n-1 (see the module docstring for the assignment)."""
  cameras, scenarios = tuple(cameras), tuple(scenarios)
  if n < 0 or not cameras or not scenarios:
    raise ValueError(f"need n >= 0 and at least one camera and scenario, got n={n}, {cameras}, {scenarios}")
  for s in scenarios:
    if s not in SCENARIOS:
      raise ValueError(f"unknown scenario {s!r} (valid: {', '.join(SCENARIOS)})")
  s, c = len(scenarios), len(cameras)
  return [SegmentSpec(seed0 + i, float(seconds), cameras[(i % s + i // s) % c], scenarios[i % s], randomise)
          for i in range(n)]


def is_finished(path: Path) -> bool:
  """Whether a segment folder was written completely."""
  if not ((path / "rlog.zst").is_file() and (path / "scene.json").is_file()):
    return False
  try:
    Scene.load(path / "scene.json")
  except (ValueError, OSError):
    return False   # scene.json cut short by an interrupted write
  return True


def _write(spec: SegmentSpec, out_dir: str) -> str:
  # overwrite: only unfinished folders reach here, and their partial files must go
  return str(write_segment(spec.scene(), out_dir, progress=False, overwrite=True))


def generate_segments(out_dir, n: int, seconds: float = 5.0, seed0: int = 0, cameras=CAMERAS,
                      scenarios=DEFAULT_SCENARIOS, workers: int = 2, progress: bool = True,
                      randomise: bool = False) -> list[Path]:
  """Write n simulated segments (openpilot segment folders + scene.json) under `out_dir`; returns their
  folders in spec order. Finished segments are kept, so an interrupted run resumes where it stopped.
  `workers` processes render in parallel (1: in this process); randomise: domain-randomised segments."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  specs = segment_specs(n, seconds, seed0, cameras, scenarios, randomise)
  paths = [out / segment_name(s.scene()) for s in specs]
  todo = [s for s, p in zip(specs, paths) if not is_finished(p)]
  bar = progress_bar(total=len(specs), initial=len(specs) - len(todo), desc="segments", unit="seg", disable=not progress)
  if workers <= 1:
    for s in todo:
      _write(s, str(out))
      bar.update()
  else:
    with ProcessPoolExecutor(workers) as pool:
      for fut in as_completed([pool.submit(_write, s, str(out)) for s in todo]):
        fut.result()   # re-raise a worker's error here
        bar.update()
  bar.close()
  return paths
