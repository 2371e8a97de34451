"""The bundled sample segments: how each was generated, so tests can check they still reproduce.

They are the default data of `fair demo` and of the tests. Regenerate them (`make samples`) only
when the simulator's output format changes: every regeneration adds its bytes to git history.
"""
from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "data" / "samples"


@dataclass(frozen=True)
class Sample:
  seed: int
  seconds: float
  camera: str
  scenario: str

  def scene(self):
    from tools.fair.sim.world import make_scene
    return make_scene(self.seed, self.seconds, self.camera, self.scenario)

  @property
  def path(self) -> Path:
    from tools.fair.sim.cli import segment_name
    return SAMPLES_DIR / segment_name(self.scene())


SAMPLES = (
  Sample(seed=1, seconds=10.0, camera="tici", scenario="cut_in"),   # comma 3X, highway traffic, a cut-in
  Sample(seed=2, seconds=10.0, camera="mici", scenario="city"),     # comma four, city street, pedestrians
)


def sample_paths() -> list[Path]:
  """Folders of the bundled samples; FileNotFoundError naming the fix when one is missing."""
  paths = [s.path for s in SAMPLES]
  for p in paths:
    if not (p / "rlog.zst").is_file():
      raise FileNotFoundError(f"bundled sample {p} is missing: run `make samples` to regenerate it")
  return paths


def regenerate() -> list[Path]:
  """Write every sample segment anew from its seed (replacing the old folders)."""
  from tools.fair.sim.cli import write_segment
  paths = []
  for s in SAMPLES:
    shutil.rmtree(s.path, ignore_errors=True)
    paths.append(write_segment(s.scene(), SAMPLES_DIR))
  return paths


if __name__ == "__main__":
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--regenerate", action="store_true", help="rewrite data/samples from the seeds")
  if ap.parse_args().regenerate:
    for p in regenerate():
      print(p, f"{sum(f.stat().st_size for f in p.iterdir()) / 1e6:.1f} MB")
