"""Point trackers: OpenCV Lucas-Kanade ("lk") and CoTracker3 online through Meta's cotracker package ("cotracker").

CoTracker runs with random weights saved in the official checkpoint layout and loaded through the teacher's own
weights path; its package comes from .venv/extern (python -m tools.fair.teachers.fetch_cotracker)."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before huggingface_hub reads it: nothing may be downloaded

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from tools.fair.teachers.cotracker import (CHECKPOINT, CHECKPOINT_URL, CoTrackerConfig,  # noqa: E402
                                           CoTrackerNotInstalledError, CoTrackerTeacher)
from tools.fair.files import sha256_file  # noqa: E402
from tools.fair.teachers.lk_tracker import LKConfig, LKTracker, check_queries, params_hash  # noqa: E402
from tools.fair.teachers.weights import MissingWeightsError  # noqa: E402

EXTERN = Path(__file__).resolve().parents[1] / ".venv" / "extern"
HAVE_COTRACKER = (EXTERN / "cotracker" / "predictor.py").is_file()
if HAVE_COTRACKER and str(EXTERN) not in sys.path:
  sys.path.insert(0, str(EXTERN))
needs_cotracker = pytest.mark.skipif(not HAVE_COTRACKER, reason=f"Meta's cotracker package is not in {EXTERN}: run "
                                     "`python -m tools.fair.teachers.fetch_cotracker` (make setup does)")
CAM = MEDMODEL.scaled(0.5)   # 256x128
SHIFT = np.array([1.3, -0.7])


def _translating(n_frames: int, shift=SHIFT, camera=CAM) -> np.ndarray:
  """A smooth random texture moving by `shift` px per frame: frame k is the texture sampled at (x, y) - k * shift."""
  rng = np.random.default_rng(0)
  tex = cv2.GaussianBlur(rng.uniform(0, 255, (camera.height + 100, camera.width + 100)).astype(np.float32), (0, 0), 2.0)
  tex = (tex - tex.mean()) * 4 + 128
  frames = [cv2.warpAffine(tex, np.float32([[1, 0, -50 + k * shift[0]], [0, 1, -50 + k * shift[1]]]),
                           (camera.width, camera.height), flags=cv2.INTER_CUBIC) for k in range(n_frames)]
  return np.repeat(np.stack(frames)[..., None], 3, -1).clip(0, 255).astype(np.uint8)


def _grid_queries(t=0):
  return np.array([[t, x, y] for x in range(40, 220, 30) for y in range(30, 100, 20)], np.float32)


# ---- LK

def test_lk_recovers_a_subpixel_translation():
  frames = _translating(8)
  tracks = LKTracker.load(LKTracker.resolve_weights(), config=LKConfig(CAM))(frames[None], _grid_queries())
  q = _grid_queries()
  assert tracks.points.shape == (8, len(q), 2) and tracks.points.dtype == np.float32
  assert tracks.visible.shape == (8, len(q))
  assert tracks.camera == CAM and tracks.visible.all()
  expected = q[None, :, 1:] + np.arange(8)[:, None, None] * SHIFT
  assert np.abs(tracks.points - expected).max() < 0.2


def test_lk_track_conventions_query_frame_nan_before_and_leaving_the_frame():
  frames = _translating(12, shift=(6.0, 0.0))
  q = np.array([[3, 40.0, 60.0], [0, 240.0, 60.0], [0, 100.25, 70.5]], np.float32)
  tracks = LKTracker.load(LKTracker.resolve_weights(), config=LKConfig(CAM))(frames[None], q)
  assert np.isnan(tracks.points[:3, 0]).all() and not tracks.visible[:3, 0].any()      # before its query frame
  assert np.array_equal(tracks.points[3, 0], q[0, 1:]) and tracks.visible[3, 0]         # exactly the query there
  assert np.array_equal(tracks.points[0, 2], q[2, 1:])
  # the point at x = 240 moves 6 px per frame: it leaves the 256 px frame after frame 2 and never comes back
  assert tracks.visible[:3, 1].all() and not tracks.visible[3:, 1].any() and np.isnan(tracks.points[3:, 1]).all()
  assert abs(tracks.points[11, 2, 0] - (100.25 + 66)) < 0.2


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-0.5, CAM.width - 0.51), st.floats(-0.5, CAM.height - 0.51)),
                min_size=1, max_size=6))
def test_lk_returns_each_query_at_its_frame(rows):
  frames = _translating(4)
  q = np.array(rows, np.float32)
  tracks = LKTracker.load(LKTracker.resolve_weights(), config=LKConfig(CAM))(frames[None], q)
  n = np.arange(len(q))
  t = q[:, 0].astype(int)
  assert np.array_equal(tracks.points[t, n], q[:, 1:]) and tracks.visible[t, n].all()
  assert not np.any(tracks.visible & np.isnan(tracks.points).any(-1))


def test_bad_clips_and_queries_are_refused():
  lk = LKTracker.load(LKTracker.resolve_weights(), config=LKConfig(CAM))
  frames = _translating(3)
  with pytest.raises(ValueError, match=r"one clip \(1, T, 128, 256, 3\)"):
    lk(frames, _grid_queries())
  with pytest.raises(ValueError, match=r"\(B, 128, 256, 3\)"):
    lk(frames[None, :, :-1], _grid_queries())
  with pytest.raises(ValueError, match=r"query 1 .*integer in \[0, 2\]"):
    check_queries([[0, 1, 1], [3, 1, 1]], 3, CAM)
  with pytest.raises(ValueError, match=r"query 0 .*inside the 256x128 frame"):
    check_queries([[0, 256.0, 1]], 3, CAM)
  with pytest.raises(ValueError, match=r"\(N, 3\)"):
    check_queries(np.zeros((2, 2)), 3, CAM)


def test_lk_weights_are_a_fixed_hash_of_its_parameters():
  info = LKTracker.resolve_weights("/nonexistent", None)
  assert info.teacher == "lk" and info.sha256 == params_hash(LKConfig()) and len(info.sha256) == 64
  assert LKTracker.load(info, config=LKConfig(CAM)).weights.sha256 == info.sha256          # camera is not a parameter
  assert LKTracker.load(info, config=LKConfig(CAM, fb_max_px=0.5)).weights.sha256 != info.sha256
  assert LKTracker.load(info).input.clip == 0


# ---- CoTracker

def test_cotracker_missing_weights_name_url_and_path(tmp_path, monkeypatch):
  with pytest.raises(MissingWeightsError) as e:
    CoTrackerTeacher.resolve_weights(tmp_path)
  assert str(tmp_path / "cotracker" / CHECKPOINT) in str(e.value) and CHECKPOINT_URL in str(e.value)
  assert CHECKPOINT_URL == "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_online.pth"
  monkeypatch.delenv("FAIR_WEIGHTS_DIR", raising=False)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
  cache = tmp_path / "models--facebook--cotracker3"
  with pytest.raises(MissingWeightsError, match=f"facebook/cotracker3/{CHECKPOINT}.*{cache}"):
    CoTrackerTeacher.resolve_weights()
  # the Hugging Face cache layout: refs/main names the snapshot that holds the file
  snap = tmp_path / "models--facebook--cotracker3" / "snapshots" / ("cd" * 20)
  snap.mkdir(parents=True)
  (snap / CHECKPOINT).write_bytes(b"not really weights")
  (snap.parents[1] / "refs").mkdir()
  (snap.parents[1] / "refs" / "main").write_text("cd" * 20)
  info = CoTrackerTeacher.resolve_weights()
  assert info.model_id == "facebook/cotracker3" and info.sha256 == sha256_file(snap / CHECKPOINT)


def test_cotracker_not_installed_says_how_to_install(tmp_path, monkeypatch):
  (tmp_path / "cotracker").mkdir()
  torch.save({"w": torch.zeros(1)}, tmp_path / "cotracker" / CHECKPOINT)
  monkeypatch.setitem(sys.modules, "cotracker", None)
  monkeypatch.setitem(sys.modules, "cotracker.predictor", None)
  with pytest.raises(CoTrackerNotInstalledError, match=r"pip install git\+https://github.com/facebookresearch/co-"):
    CoTrackerTeacher.load(CoTrackerTeacher.resolve_weights(tmp_path))


@pytest.fixture(scope="module")
def cot_weights(tmp_path_factory):
  """DIR/cotracker/scaled_online.pth: a random CoTracker3 online model (window 4 to stay fast on a CPU) saved as
  a plain state_dict, as the official file is."""
  if not HAVE_COTRACKER:
    pytest.skip(f"Meta's cotracker package is not in {EXTERN}: run `python -m tools.fair.teachers.fetch_cotracker`")
  from tools.fair.teachers.cotracker import online_predictor_class
  root = tmp_path_factory.mktemp("weights")
  (root / "cotracker").mkdir()
  torch.manual_seed(0)
  torch.save(online_predictor_class()(checkpoint=None, window_len=4).model.state_dict(),
             root / "cotracker" / CHECKPOINT)
  return root


SMALL = CoTrackerConfig(CAM, window_len=4, resolution=(64, 128), support_grid=False)   # CPU-sized; slow test: grid


@needs_cotracker
def test_cotracker_random_weights_run_end_to_end(cot_weights, monkeypatch):
  monkeypatch.setenv("FAIR_WEIGHTS_DIR", str(cot_weights))
  info = CoTrackerTeacher.resolve_weights()
  assert info.path == cot_weights / "cotracker" / CHECKPOINT and info.sha256 == sha256_file(info.path)
  rng_before = torch.random.get_rng_state()
  teacher = CoTrackerTeacher.load(info, config=SMALL)
  assert torch.equal(torch.random.get_rng_state(), rng_before)    # the package's import-time seeding is undone
  frames = _translating(6)
  q = np.array([[0, 40.0, 60.0], [2, 100.5, 30.25], [0, 200.0, 90.0]], np.float32)
  tracks = teacher(frames[None], q)        # windows [0, 4) and [2, 6)
  assert tracks.points.shape == (6, 3, 2) and tracks.visible.shape == (6, 3) and tracks.visible.dtype == bool
  assert np.array_equal(tracks.points[[0, 2, 0], [0, 1, 2]], q[:, 1:]) and tracks.visible[[0, 2, 0], [0, 1, 2]].all()
  assert np.isnan(tracks.points[:2, 1]).all() and not tracks.visible[:2, 1].any()
  assert np.isfinite(tracks.points[2:]).all()    # random weights: positions are meaningless but defined
  assert teacher.input.clip == 0 and teacher.weights.sha256 == info.sha256


@needs_cotracker
def test_cotracker_refuses_other_checkpoints(cot_weights, tmp_path):
  with pytest.raises(ValueError, match="not a CoTracker3 online checkpoint for window_len=16"):
    CoTrackerTeacher.load(CoTrackerTeacher.resolve_weights(cot_weights))    # a window-4 model, default window 16
  (tmp_path / "cotracker").mkdir()
  torch.save({"fnet.conv1.weight": torch.zeros(3)}, tmp_path / "cotracker" / CHECKPOINT)
  with pytest.raises(ValueError, match="not a CoTracker3 online checkpoint"):
    CoTrackerTeacher.load(CoTrackerTeacher.resolve_weights(tmp_path), config=SMALL)
  with pytest.raises(ValueError, match="multiples of 32"):
    CoTrackerTeacher.load(CoTrackerTeacher.resolve_weights(cot_weights),
                          config=CoTrackerConfig(CAM, window_len=4, resolution=(100, 128)))


@needs_cotracker
@pytest.mark.slow
def test_cotracker_official_architecture_at_model_frame(tmp_path):
  """The official configuration (window 16, 384x512 network input) on a 20-frame half-size clip: two windows."""
  from tools.fair.teachers.cotracker import online_predictor_class
  (tmp_path / "cotracker").mkdir()
  torch.save(online_predictor_class()(checkpoint=None).model.state_dict(), tmp_path / "cotracker" / CHECKPOINT)
  teacher = CoTrackerTeacher.load(CoTrackerTeacher.resolve_weights(tmp_path), config=CoTrackerConfig(CAM))
  tracks = teacher(_translating(20)[None], _grid_queries())
  assert tracks.points.shape == (20, 24, 2) and np.isfinite(tracks.points).all()
  assert np.array_equal(tracks.points[0], _grid_queries()[:, 1:])
