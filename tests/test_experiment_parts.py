"""Experiment parts: the dinov2-seg teacher's weights path, teacher training on rendered frames, the evaluation
metrics on known inputs, and segment generation (tiny models, half-size model frames)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before huggingface_hub reads it: nothing may be downloaded

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import Dinov2Config, Dinov2Model  # noqa: E402

from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from selfdrive.modeld_fair.classes import CLASS_ID, SEMANTIC_CLASSES  # noqa: E402
from selfdrive.modeld_fair.model_io import OUTPUTS  # noqa: E402
from tools.fair.experiments.evaluate import (comparison_table, evaluate_student, evaluate_teachers,  # noqa: E402
                                             write_table)
from tools.fair.experiments.generate import generate_segments, is_finished, segment_specs  # noqa: E402
from tools.fair.teachers.dpt_depth import DptDepthConfig  # noqa: E402
from tools.fair.experiments.teacher_training import (TeacherTrainConfig, depth_teacher_config,  # noqa: E402
                                                     train_depth_teacher, train_seg_teacher)
from tools.fair.sim import make_scene, scene_gt  # noqa: E402
from tools.fair.teachers import DepthMaps, MissingWeightsError, SemanticMaps, load_teacher  # noqa: E402
from tools.fair.teachers.dinov2_seg import (DinoSegConfig, DinoSegNet, Dinov2SegTeacher, HeadConfig,  # noqa: E402
                                            LinearSegHead, save_head)
from tools.fair.teachers.preprocess import to_model_frame, to_network  # noqa: E402

CAM = MEDMODEL.scaled(0.5)
TINY = TeacherTrainConfig(hidden=32, layers=4, heads=2, input_height=56, dpt_fusion=16, steps=8, batch=2, lr=3e-3,
                          warmup=2)


@pytest.fixture(scope="module")
def sim():
  """Three model frames of a generated city drive with exact depth and classes at 256x128."""
  scene = make_scene(3, 0.5, scenario="city")
  gts = [scene_gt(scene, f, CAM, (0, 0, 0), frame="model") for f in (0, 4, 8)]
  return (np.stack([g.rgb for g in gts]), np.stack([g.depth for g in gts]), np.stack([g.semantic for g in gts]))


def _load_seg(root):
  return Dinov2SegTeacher.load(Dinov2SegTeacher.resolve_weights(root), config=DinoSegConfig(CAM))


# ---- the dinov2-seg teacher

def test_seg_teacher_roundtrip_through_the_weights_path(tmp_path, sim):
  torch.manual_seed(0)
  backbone = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                      patch_size=14, image_size=56))
  head = LinearSegHead(HeadConfig(32, (2, 3), train_focal=CAM.focal * 70 / 128))   # "+ms"-style: two blocks
  torch.nn.init.normal_(head.bn.running_mean)   # non-trivial BN statistics must survive the round trip
  net = DinoSegNet(backbone, head).eval()
  folder = tmp_path / "dinov2-seg"
  backbone.save_pretrained(folder)
  save_head(head, folder)
  teacher = _load_seg(tmp_path)
  assert teacher.size == (70, 140)   # head.json's focal length sets the input scale
  out = teacher(sim[0])
  assert isinstance(out, SemanticMaps) and out.camera == CAM
  assert out.semantic.shape == (3, 128, 256) and out.semantic.dtype == np.uint8
  assert out.probs.shape == (3, len(SEMANTIC_CLASSES), 128, 256) and out.probs.dtype == np.float32
  np.testing.assert_allclose(out.probs.sum(1), 1, atol=1e-5)
  assert np.array_equal(out.semantic, out.probs.argmax(1))
  with torch.no_grad():   # the same numbers as the network that was saved
    ref = to_model_frame(net(to_network(sim[0], CAM, (70, 140), "cpu", torch.float32)), CAM).softmax(1).numpy()
  np.testing.assert_allclose(out.probs, ref, atol=1e-5)
  assert teacher.weights.sha256 and teacher.weights.path == folder

  (folder / "head.safetensors").unlink()
  with pytest.raises(MissingWeightsError, match="lacks head.safetensors.*ADE20K"):
    _load_seg(tmp_path)
  with pytest.raises(MissingWeightsError, match="facebook/dinov2-small.*mmseg"):
    Dinov2SegTeacher.resolve_weights("hf-cache")
  save_head(LinearSegHead(HeadConfig(32, (3,), 100.0, classes=tuple(f"ade{i}" for i in range(150)))), folder)
  with pytest.raises(ValueError, match="classes.SEMANTIC_CLASSES"):
    _load_seg(tmp_path)


# ---- teacher training

def test_seg_teacher_training_learns_and_reloads(tmp_path, sim):
  frames, _, semantic = sim
  result = train_seg_teacher(frames, semantic, tmp_path, TINY)
  assert result.path == tmp_path / "dinov2-seg" and len(result.losses) == TINY.steps
  assert result.losses[-3:].mean() < 0.8 * result.losses[:3].mean()
  info = json.loads((result.path / "training.json").read_text())
  assert info["frames"] == 3 and info["network_size"] == [56, 112] and info["config"]["steps"] == TINY.steps
  teacher = _load_seg(tmp_path)
  assert teacher.size == (56, 112)
  out = teacher(frames)
  assert (out.semantic == semantic).mean() > 0.3   # better than chance over 8 classes after 8 steps
  with pytest.raises(ValueError, match="class ids"):
    train_seg_teacher(frames, np.full_like(semantic, 9), tmp_path, TINY)


def test_depth_teacher_training_learns_and_loads_without_focal_correction(tmp_path, sim):
  frames, depth, _ = sim
  result = train_depth_teacher(frames, depth, tmp_path, TINY)
  assert result.losses[-3:].mean() < result.losses[:3].mean()
  assert result.train_focal == pytest.approx(CAM.focal * 56 / 128)
  teacher = load_teacher("dpt-depth", tmp_path, config=depth_teacher_config(tmp_path, CAM))
  assert teacher.size == (56, 112) and teacher.input_focal == pytest.approx(result.train_focal)
  # the checkpoint itself records that focal length: the default config (no KITTI assumption) feeds the same size
  plain = load_teacher("dpt-depth", tmp_path, config=DptDepthConfig(camera=CAM))
  assert plain.size == (56, 112) and plain.config.train_focal == pytest.approx(result.train_focal)
  out = teacher(frames)
  assert isinstance(out, DepthMaps) and out.depth.shape == depth.shape
  with torch.no_grad():   # the teacher returns the trained network's map, resized, with no focal factor
    raw = teacher.model(pixel_values=to_network(frames, CAM, (56, 112), "cpu", torch.float32)).predicted_depth
  np.testing.assert_allclose(out.depth, to_model_frame(raw[:, None], CAM)[:, 0].clamp_min(1e-3).numpy(), rtol=1e-5)
  with pytest.raises(ValueError, match="no depth"):
    train_depth_teacher(frames, np.zeros_like(depth), tmp_path, TINY)
  with pytest.raises(FileNotFoundError, match="training.json"):
    depth_teacher_config(tmp_path / "nothing")


# ---- evaluation

class _Oracle(torch.nn.Module):
  """A 'student' that outputs exactly its sample's targets (looked up by the image's first byte)."""

  def __init__(self, items):
    super().__init__()
    self.items = items

  def forward(self, img):
    outs = [self._one(self.items[int(i)]) for i in img[:, 0, 0, 0]]
    return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

  @staticmethod
  def _one(it):
    seg = torch.nn.functional.one_hot(it["seg"] % 255, len(SEMANTIC_CLASSES)).permute(2, 0, 1).float()
    heat, box = torch.zeros(OUTPUTS["obj_heatmap"][0][1:]), torch.zeros(OUTPUTS["obj_box"][0][1:])
    heat[0, 10, 30] = 0.9                               # a vehicle centred on cell (10, 30): (243.5, 83.5) px
    box[:, 10, 30] = torch.tensor([10.0, 6.0, 10.0, 6.0])
    lanes = torch.zeros(OUTPUTS["lanes"][0][1:])
    lanes[..., :2] = it["lanes"]
    return {"depth": it["depth"], "seg_logits": seg, "obj_heatmap": heat, "obj_box": box,
            "obj_depth": torch.full((1, 32, 64), 20.0), "lanes": lanes, "lane_prob": it["lane_exists"],
            "ego": torch.cat([it["ego"], torch.zeros(6)])}


def _items(n=3):
  rng = np.random.default_rng(0)
  items = []
  for i in range(n):
    depth = torch.from_numpy(rng.uniform(2, 60, (1, 32, 64)).astype(np.float32))
    depth[0, :4] = 0                                       # unknown cells are not scored
    seg = torch.from_numpy(rng.integers(0, len(SEMANTIC_CLASSES), (64, 128)))
    seg[:2] = 255
    lanes = torch.zeros(4, 33, 2)
    lanes[:, :, 0] = torch.tensor([-5.4, -1.8, 1.8, 5.4])[:, None]
    img = torch.zeros(12, 128, 256, dtype=torch.uint8)
    img[0, 0, 0] = i
    items.append({"img": img, "index": torch.tensor(i), "depth": depth, "seg": seg, "lanes": lanes,
                  "lane_valid": torch.ones(4, 33), "lane_exists": torch.tensor([0.0, 1.0, 1.0, 0.0]),
                  "ego": torch.tensor([15.0 + i, 0.0, 0.0, 0.0, 0.0, 0.01])})
  return items


def test_perfect_student_scores_perfectly():
  items = _items()
  lateral = 20.0 * (243.5 - MEDMODEL.cx) / MEDMODEL.focal      # the oracle's car, 20 m ahead on cell (10, 30)
  boxes = lambda i: (np.array([[233.5, 77.5, 253.5, 89.5]]), np.array([CLASS_ID["vehicle"]]),
                     np.array([[20.0, lateral, 0.0]]))
  r = evaluate_student(_Oracle(items), items, boxes=boxes, batch=2)
  assert r["frames"] == 3 and r["depth_cells"] == 3 * 28 * 64
  assert r["depth_abs_rel"] == 0 and r["depth_delta1"] == 1
  assert r["miou"] == 1 and r["pixel_accuracy"] == 1 and set(r["iou"]) == set(SEMANTIC_CLASSES)
  assert r["det_ap"] == pytest.approx(1) and r["det_ap50"] == pytest.approx(1)
  assert r["lane_f1"] == 1 and r["lane_lat_err_20m"] == 0
  # the goal metrics: vehicle AP50 within 80 m, the lead, both ego-lane lines at 20 m, ego speed
  assert r["det_vehicle_ap50_80m"] == pytest.approx(1) and r["det_per_class_ap50"] == {"vehicle": pytest.approx(1)}
  assert r["lead_frames"] == 3 and r["lead_detection_rate"] == 1 and r["lead_dist_median_rel"] == 0
  assert r["ego_lane_frames"] == 3 and r["ego_lane_20m_rate"] == 1
  assert r["ego_speed_mae"] == 0 and r["ego_speed_rel"] == 0
  # a lane 1 m off at every point: found by none at 0.5 m tolerance, lateral error exactly 1 m
  for it in items:
    it["lanes"][1, :, 0] += 1.0
  shifted = _Oracle(_items())
  r = evaluate_student(shifted, items, boxes=lambda i: (np.array([[0.0, 0.0, 8.0, 8.0]]), np.array([4]),
                                                        np.array([[5.0, 0.0, 0.0]])))
  assert r["lane_f1"] == pytest.approx(0.5) and r["lane_lat_err_10m"] == pytest.approx(0.5)
  assert r["det_ap"] == 0 and r["ego_lane_20m_rate"] == 0
  assert r["lead_detection_rate"] == 1 and r["lead_dist_median_rel"] == pytest.approx(3)   # true 5 m, found at 20 m


def test_teacher_evaluation_at_student_grids():
  rng = np.random.default_rng(1)
  frames = np.zeros((2, 128, 256, 3), np.uint8)
  depth = rng.uniform(1, 70, (2, 128, 256)).astype(np.float32)
  depth[:, :20] = np.inf                                      # sky
  semantic = rng.integers(0, 8, (2, 128, 256)).astype(np.uint8)
  cls = lambda pred: type("T", (), {"__call__": lambda self, f: pred(len(f))})()
  exact = evaluate_teachers(frames, depth, semantic, cls(lambda n: DepthMaps(depth[:n], CAM)),
                            cls(lambda n: SemanticMaps(semantic[:n], np.zeros((n, 8, 128, 256), np.float32), CAM)))
  assert exact["depth"]["depth_abs_rel"] == 0 and exact["seg"]["miou"] == 1
  scaled = evaluate_teachers(frames, depth, None, cls(lambda n: DepthMaps(1.1 * depth[:n], CAM)))
  assert scaled["depth"]["depth_abs_rel"] == pytest.approx(0.1, rel=1e-5) and scaled["depth"]["depth_delta1"] == 1
  assert "seg" not in scaled
  with pytest.raises(ValueError, match="without 2 ground-truth"):
    evaluate_teachers(frames, None, None, cls(lambda n: DepthMaps(depth[:n], CAM)))


def test_comparison_table(tmp_path):
  rows = {"teacher: dpt-depth": {"params": 6e6, "gflops": 15.0, "depth_abs_rel": 0.12, "depth_delta1": 0.85},
          "teacher: dinov2-seg": {"params": 4e6, "gflops": 5.0, "miou": 0.5},
          "student (distilled)": {"params": 1e6, "gflops": 2.0, "depth_abs_rel": 0.2, "miou": float("nan")}}
  table = comparison_table(rows)
  lines = table.splitlines()
  assert len(lines) == 5 and lines[0].startswith("| Model | Params (M) | GFLOPs | Compression")
  assert "| student (distilled) | 1.00 | 2.00 | 10.0x / 10.0x | 0.200 | – | – |" in table
  assert "| teacher: dpt-depth | 6.00 | 15.00 | – | 0.120 | 0.850 | – |" in table
  path = write_table(tmp_path / "r" / "table.md", rows, title="Teacher vs student")
  assert path.read_text() == "# Teacher vs student\n\n" + table


# ---- generation

def test_segment_specs_cover_scenarios_and_cameras():
  specs = segment_specs(12, 5.0, seed0=7, scenarios=("city", "highway", "night"))
  assert [s.seed for s in specs] == list(range(7, 19))
  assert {(s.scenario, s.camera) for s in specs[:6]} == {(a, b) for a in ("city", "highway", "night")
                                                       for b in ("tici", "mici")}
  assert [s.camera for s in specs[:3]] == ["tici", "mici", "tici"]
  with pytest.raises(ValueError, match="unknown scenario 'moon'"):
    segment_specs(1, 5.0, scenarios=("moon",))


@pytest.mark.slow   # encodes two (tiny) segments' videos: ~10 s idle, 30 s on the shared CPU
def test_generate_segments_resumes(tmp_path):
  paths = generate_segments(tmp_path, 2, seconds=0.1, seed0=3, cameras=("mici",), scenarios=("city",), workers=1,
                            progress=False)
  assert [p.name for p in paths] == ["fairsim-mici-city-s3--0", "fairsim-mici-city-s4--0"]
  assert all(is_finished(p) for p in paths)
  stamp = (paths[0] / "rlog.zst").stat().st_mtime_ns
  (paths[1] / "rlog.zst").unlink()                    # an interrupted segment is written again, a finished one kept
  assert not is_finished(paths[1])
  again = generate_segments(tmp_path, 2, seconds=0.1, seed0=3, cameras=("mici",), scenarios=("city",), workers=1,
                            progress=False)
  assert again == paths and is_finished(paths[1]) and (paths[0] / "rlog.zst").stat().st_mtime_ns == stamp
