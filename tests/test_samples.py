"""The bundled samples still read back and are still what their seeds generate."""
import json

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import DEVICE_CAMERAS
from tools.fair.routes import Segment
from tools.fair.samples import SAMPLES, sample_paths
from tools.fair.sim.render import render_frame


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.camera}-{s.scenario}")
def test_sample_reproduces_from_its_seed(sample):
  scene = sample.scene()
  stored = json.loads((sample.path / "scene.json").read_text())
  assert stored == json.loads(scene.to_json())
  seg = Segment(sample.path)
  assert seg.camera == DEVICE_CAMERAS[sample.camera]
  assert len(seg.of_type("roadCameraState")) == scene.n_frames == round(sample.seconds * 20)
  wanted = {0, scene.n_frames // 2}
  frames = seg.frames()
  for f in frames:
    if f.index in wanted:
      rendered = render_frame(scene, f.index, seg.camera).rgb.astype(np.float64)
      mse = np.mean((f.rgb().astype(np.float64) - rendered) ** 2)
      assert 10 * np.log10(255 ** 2 / mse) > 32, f"frame {f.index} differs from a fresh render"
      wanted.discard(f.index)
      if not wanted:
        break
  frames.close()
  assert not wanted


def test_sample_paths_are_bundled():
  assert [p.name for p in sample_paths()] == [s.path.name for s in SAMPLES]
