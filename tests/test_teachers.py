"""Teachers: tiny random models of the real classes, saved with save_pretrained and loaded through the
teachers' own weights path with the hub offline, run on simulator frames in the model frame."""
import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before huggingface_hub reads it: nothing may be downloaded

import shutil  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from transformers import (DetrConfig, DetrForObjectDetection, DetrForSegmentation, Dinov2Config, Dinov2Model,  # noqa: E402
                          DINOv3ViTConfig, DINOv3ViTModel, DPTConfig, DPTForDepthEstimation, ResNetConfig)

from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from selfdrive.modeld_fair.classes import CLASS_ID, IGNORE_ID  # noqa: E402
from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables  # noqa: E402
from tools.fair.routes import Segment  # noqa: E402
from tools.fair.sim import SCENARIOS, make_scene, render_frame  # noqa: E402
from tools.fair.sim.cli import write_segment  # noqa: E402
from tools.fair.teachers import (TEACHERS, DetrTeacherConfig, DinoConfig, DptDepthConfig, MissingWeightsError,  # noqa: E402
                                 load_teacher, resolve_weights)
from tools.fair.teachers.depth_probe import DepthProbe, train_depth_probe  # noqa: E402
from tools.fair.teachers.detr import detections_from_outputs, panoptic_from_outputs, road_positions  # noqa: E402
from tools.fair.teachers.dinov2 import pca_rgb, save_png  # noqa: E402
from tools.fair.teachers.dpt_depth import KITTI_FOCAL  # noqa: E402
from tools.fair.teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, network_size, to_model_frame, to_network  # noqa: E402
from tools.fair.teachers.weights import weights_hash  # noqa: E402

CAM = MEDMODEL.scaled(0.5)   # 256x128: the model frame at half resolution keeps every test small
# DETR's 91-id COCO label space, up to stop sign (the rest: other COCO classes, "N/A" here)
COCO = {i: "N/A" for i in range(91)} | {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus",
                                       7: "train", 8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant",
                                       13: "stop sign"}
PANOPTIC = COCO | {i: "N/A" for i in range(91, 200)} | {149: "road", 184: "grass-merged", 187: "sky-other-merged",
                                                       199: "tree-merged"}
RESNET = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
              out_features=["stage1", "stage2", "stage3", "stage4"])
DETR = dict(use_timm_backbone=False, use_pretrained_backbone=False, d_model=64, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=12)


def _dpt():
  backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=14,
                          image_size=56, out_indices=[1, 2, 3, 4], apply_layernorm=False, reshape_hidden_states=False)
  # the official heads' layout (facebook/dpt-dinov2-*-kitti): projection before the head needs 256 fusion channels
  return DPTForDepthEstimation(DPTConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32],
                                         fusion_hidden_size=256, use_bias_in_fusion_residual=False, add_projection=True))


BUILDERS = {
  "dinov2": lambda: Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, patch_size=14, image_size=56)),
  "dinov3": lambda: DINOv3ViTModel(DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                   intermediate_size=64, patch_size=16, num_register_tokens=4)),
  "dpt-depth": _dpt,
  "detr": lambda: DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**RESNET), id2label=COCO, **DETR)),
  "detr-panoptic": lambda: DetrForSegmentation(DetrConfig(backbone_config=ResNetConfig(**RESNET), id2label=PANOPTIC,
                                                          **DETR)),
}
CONFIGS = {"dinov2": DinoConfig(CAM), "dinov3": DinoConfig(CAM, layer=1), "dpt-depth": DptDepthConfig(CAM),
           "detr": DetrTeacherConfig(CAM, scale=0.5), "detr-panoptic": DetrTeacherConfig(CAM, scale=0.5)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A weights DIR with one tiny random checkpoint per teacher, in the official folder layout."""
  root = tmp_path_factory.mktemp("weights")
  for name, build in BUILDERS.items():
    torch.manual_seed(0)
    build().save_pretrained(root / name)
  return root


@pytest.fixture(scope="module")
def sim():
  """Two frames of a generated city segment in the (half-size) model frame, with exact depth."""
  scene = make_scene(4, 0.5, scenario="city")
  renders = [render_frame(scene, f, CAM, (0, 0, 0)) for f in (2, 7)]
  return np.stack([r.rgb for r in renders]), np.stack([r.depth for r in renders])


# ---- weights

def test_registry_covers_the_teachers_with_official_ids():
  assert set(TEACHERS) >= {"dinov2", "dinov3", "dpt-depth", "detr", "detr-panoptic", "sam2", "sam3", "flow", "dinov2-seg",
                           "cotracker", "lk"}
  for name, cls in TEACHERS.items():
    assert cls.name == name and cls.tasks and all(i.startswith("facebook/") for i in cls.hf_ids)
  # teachers without official Hugging Face weights resolve their own and say how to get them
  for name in ("flow", "lk", "cotracker"):
    assert callable(TEACHERS[name].resolve_weights)
  assert not TEACHERS["flow"].hf_ids and not TEACHERS["lk"].hf_ids
  assert TEACHERS["dpt-depth"].hf_ids[0] == "facebook/dpt-dinov2-small-kitti"
  with pytest.raises(ValueError, match="unknown teacher 'sam9'.*dinov2"):
    load_teacher("sam9")


@pytest.mark.parametrize("name", sorted(n for n in TEACHERS if TEACHERS[n].hf_ids))
def test_missing_weights_error_names_official_id_and_path(tmp_path, name):
  with pytest.raises(MissingWeightsError) as e:
    load_teacher(name, tmp_path)
  msg = str(e.value)
  assert str(tmp_path / name) in msg and TEACHERS[name].hf_ids[0] in msg and "https://huggingface.co/" in msg


def test_weights_env_and_offline_cache(weights, tmp_path, monkeypatch):
  monkeypatch.setenv("FAIR_WEIGHTS_DIR", str(weights))
  info = resolve_weights("dinov2", ("facebook/dinov2-small",))
  assert info.path == weights / "dinov2" and info.model_id is None and info.sha256 == weights_hash(weights / "dinov2")
  # the Hugging Face cache layout: refs/<revision> names the snapshot folder
  monkeypatch.delenv("FAIR_WEIGHTS_DIR")
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
  with pytest.raises(MissingWeightsError, match=f"facebook/dinov2-small.*{tmp_path / 'models--facebook--dinov2-small'}"):
    load_teacher("dinov2")
  repo = tmp_path / "models--facebook--dinov2-small"
  shutil.copytree(weights / "dinov2", repo / "snapshots" / ("ab" * 20))
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("ab" * 20)
  teacher = load_teacher("dinov2", config=DinoConfig(CAM))
  assert teacher.weights.model_id == "facebook/dinov2-small" and teacher.weights.sha256 == info.sha256


def test_weights_hash_covers_names_and_bytes_not_download_metadata(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
  h = weights_hash(tmp_path)
  (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
  (tmp_path / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("timestamp")
  assert weights_hash(tmp_path) == h
  (tmp_path / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")
  assert weights_hash(tmp_path) != h
  (tmp_path / "model.safetensors").rename(tmp_path / "model2.safetensors")
  assert weights_hash(tmp_path) != h


def test_wrong_checkpoints_are_refused(weights, tmp_path):
  shutil.copytree(weights / "dinov2", tmp_path / "dpt-depth")
  with pytest.raises(ValueError, match="holds a 'dinov2' checkpoint.*'dpt'"):
    load_teacher("dpt-depth", tmp_path)
  shutil.copytree(weights / "detr-panoptic", tmp_path / "detr")   # weights under detr.*: the detector's are missing
  with pytest.raises(ValueError, match="lacks .* weights of DetrForObjectDetection"):
    load_teacher("detr", tmp_path)
  DetrConfig().save_pretrained(tmp_path / "timm" / "detr")        # the official main revisions' timm ResNet
  with pytest.raises(ValueError, match="timm backbone.*no_timm"):
    load_teacher("detr", tmp_path / "timm")
  DetrConfig(backbone_config=ResNetConfig(**RESNET), **DETR).save_pretrained(tmp_path / "labels" / "detr")
  with pytest.raises(ValueError, match="missing from id2label"):
    load_teacher("detr", tmp_path / "labels")


# ---- preprocessing

def test_network_size_snaps_to_patches_keeping_2_to_1():
  assert network_size(MEDMODEL, 1.0, 14) == (252, 504)
  assert network_size(MEDMODEL, 1.0, 16) == (256, 512)
  assert network_size(MEDMODEL, KITTI_FOCAL / MEDMODEL.focal, 28) == (196, 392)
  assert network_size(MEDMODEL, 2.5, 32) == (640, 1280)
  with pytest.raises(ValueError):
    network_size(MEDMODEL, 0.0, 14)


@pytest.mark.parametrize("size", [(252, 504), (98, 196), (640, 1280)])
def test_resize_there_and_back_keeps_pixels_in_place(size):
  frame = np.zeros((1, CAM.height, CAM.width, 3), np.uint8)
  frame[0, 40:71, 90:131] = 255      # a 41x31 square centred on (110, 55)
  x = to_network(frame, CAM, size, "cpu", torch.float32)
  assert x.shape == (1, 3, *size)
  np.testing.assert_allclose(x[0, :, 0, 0], -np.array(IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5)
  back = to_model_frame(x[:, :1], CAM)[0, 0].numpy()
  assert back.shape == (CAM.height, CAM.width)
  w = back - back.min()
  vv, uu = np.mgrid[:CAM.height, :CAM.width]
  assert (w * uu).sum() / w.sum() == pytest.approx(110, abs=0.1)   # no half-pixel shift either way
  assert (w * vv).sum() / w.sum() == pytest.approx(55, abs=0.1)
  with pytest.raises(ValueError, match=r"\(B, 128, 256, 3\)"):
    to_network(frame[:, :-1], CAM, size, "cpu", torch.float32)


# ---- DINOv2 / DINOv3

@pytest.mark.parametrize("name,grid", [("dinov2", (9, 18)), ("dinov3", (8, 16))])
def test_dino_features(weights, sim, name, grid):
  frames, _ = sim
  teacher = load_teacher(name, weights, config=CONFIGS[name])
  maps = teacher(frames)
  assert maps.features.shape == (2, 32, *grid) and maps.cls.shape == (2, 32) and maps.features.dtype == np.float32
  assert np.isfinite(maps.features).all()
  # tokens of a block pass the final LayerNorm: zero mean, unit variance per token before its affine (1, 0 at init)
  np.testing.assert_allclose(maps.features.mean(1), 0, atol=1e-4)
  assert maps.layer == (2 if name == "dinov2" else 1)
  assert np.array_equal(teacher(frames).features, maps.features)                             # deterministic
  assert np.array_equal(load_teacher(name, weights, config=CONFIGS[name])(frames).features, maps.features)
  assert not np.array_equal(maps.features[0], maps.features[1])
  half = load_teacher(name, weights, dtype=torch.bfloat16, config=CONFIGS[name])(frames)   # the GPU precision
  assert half.features.dtype == np.float32 and np.abs(half.features - maps.features).max() < 0.1


def test_pca_visualisation_png(weights, sim, tmp_path):
  maps = load_teacher("dinov2", weights, config=CONFIGS["dinov2"])(sim[0])
  rgb = pca_rgb(maps)
  assert rgb.shape == (2, CAM.height, CAM.width, 3) and rgb.dtype == np.uint8
  assert rgb.min() == 0 and rgb.max() == 255 and rgb.std() > 20
  path = save_png(tmp_path / "viz" / "pca.png", rgb[0])
  assert np.array_equal(cv2.imread(str(path))[..., ::-1], rgb[0])


# ---- depth

def test_dpt_depth_is_metric_at_model_frame(weights, sim, tmp_path):
  frames, _ = sim
  teacher = load_teacher("dpt-depth", weights, config=CONFIGS["dpt-depth"])
  assert teacher.size == (196, 392)   # f 455 px scaled to KITTI's 721.5, snapped to the even patch grid
  depth = teacher(frames).depth
  assert depth.shape == (2, CAM.height, CAM.width) and np.isfinite(depth).all() and (depth >= 1e-3).all()
  assert np.array_equal(teacher(frames).depth, depth)
  # a head predicting 20 m everywhere: the map is 20 m times input focal / KITTI focal, in every pixel
  model = DPTForDepthEstimation.from_pretrained(weights / "dpt-depth")
  model.head.head[4].weight.data.zero_()
  model.head.head[4].bias.data.fill_(20.0)
  model.save_pretrained(tmp_path / "dpt-depth")
  teacher = load_teacher("dpt-depth", tmp_path, config=CONFIGS["dpt-depth"])
  assert teacher.input_focal == pytest.approx(CAM.focal * 196 / 128)
  np.testing.assert_allclose(teacher(frames[:1]).depth, 20 * teacher.input_focal / KITTI_FOCAL, rtol=1e-5)


def test_depth_probe_learns_simulator_depth(weights, sim, tmp_path):
  frames, depth = sim
  maps = load_teacher("dinov2", weights, config=CONFIGS["dinov2"])(frames)
  probe, losses = train_depth_probe(maps, depth, steps=40, lr=1e-2)
  assert losses[-1] < 0.7 * losses[0]
  pred = probe.predict(maps).depth
  assert pred.shape == depth.shape and (pred >= 0.5).all() and (pred <= 300).all()
  first, again = (train_depth_probe(maps, depth, steps=3)[0].predict(maps).depth for _ in range(2))
  assert np.array_equal(first, again)                                   # seeded: the same data give the same probe
  assert np.array_equal(DepthProbe.load(probe.save(tmp_path / "probe.safetensors")).predict(maps).depth, pred)
  with pytest.raises(ValueError, match="valid pixels"):
    train_depth_probe(maps, np.full_like(depth, np.inf), steps=1)


# ---- DETR

def test_detection_postprocess_maps_coco_to_driving_boxes():
  logits = torch.full((1, 5, 92), -10.0)
  boxes = torch.tensor([[[0.5, 0.5, 0.25, 0.5], [0.1, 0.2, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.1, 0.1],
                         [0.9, 0.8, 0.4, 0.2]]])
  logits[0, 0, 3] = 10      # car, certain
  logits[0, 1, 5] = 10      # airplane: not a driving class
  logits[0, 2, 91] = 10     # no object
  logits[0, 3, [1, 91]] = 1  # person or nothing: 0.5, below the threshold
  logits[0, 4, 13] = 2      # stop sign, box leaving the frame on the right
  (det,) = detections_from_outputs(logits, boxes, COCO, MEDMODEL, 0.7)
  assert det.classes == ("car", "stop sign") and det.coco_ids.tolist() == [3, 13] and det.positions is None
  assert det.scores[0] > det.scores[1] > 0.7
  # normalised 0..1 spans the frame's pixel edges -0.5 .. 511.5 / 255.5
  np.testing.assert_allclose(det.boxes, [[191.5, 63.5, 319.5, 191.5], [357.9, 178.7, 511.5, 229.9]], atol=1e-4)


def test_road_positions_from_depth():
  depth = np.full((MEDMODEL.height, MEDMODEL.width), np.inf, np.float32)
  h, f, cx, cy = 1.3, MEDMODEL.focal, MEDMODEL.cx, MEDMODEL.cy
  bottom = cy + h * f / 20       # a car 20 m ahead stands on the road at this row
  box = np.array([[300.0, bottom - 40, 340.0, bottom]])
  depth[int(bottom) - 40:int(bottom), 300:340] = 20.0
  depth[77:81, 300:340] = 80.0   # a few pixels of background inside the box's central half: outvoted
  (p,) = road_positions(box, depth, MEDMODEL, h)
  np.testing.assert_allclose(p, [20.0, (320 - cx) * 20 / f, 0.0], atol=1e-4)
  assert np.isnan(road_positions(box + [0, -100, 0, -100], depth, MEDMODEL, h)).all()   # only sky


def test_detr_teacher_on_frames(weights, sim, tmp_path):
  frames, depth = sim
  teacher = load_teacher("detr", weights, config=CONFIGS["detr"])
  assert teacher.size == (64, 128)
  dets = teacher(frames, depth=depth)
  assert len(dets) == 2 and all(d.positions.shape == (len(d.boxes), 3) for d in dets)
  # a head that calls every query a car: all of them survive, in the frame, with road positions
  model = DetrForObjectDetection.from_pretrained(weights / "detr")
  model.class_labels_classifier.bias.data[3] = 50.0
  model.save_pretrained(tmp_path / "detr")
  teacher = load_teacher("detr", tmp_path, config=CONFIGS["detr"])
  dets = teacher(frames, depth=depth)
  for d in dets:
    assert d.classes == ("car",) * DETR["num_queries"] and (d.scores > 0.99).all()
    assert (d.boxes[:, :2] >= -0.5).all() and (d.boxes[:, 2] <= CAM.width - 0.5).all()
    assert (d.boxes[:, 3] <= CAM.height - 0.5).all() and (d.boxes[:, 2:] >= d.boxes[:, :2]).all()
    ok = ~np.isnan(d.positions[:, 0])
    assert (d.positions[ok, 0] > 0).all()
  again = teacher(frames, depth=depth)
  assert all(np.array_equal(a.boxes, b.boxes) and np.array_equal(a.positions, b.positions, equal_nan=True)
             for a, b in zip(dets, again))
  assert teacher(frames)[0].positions is None
  with pytest.raises(ValueError, match="depth must be"):
    teacher(frames, depth=depth[:1])


def test_panoptic_postprocess_maps_to_our_classes():
  logits = torch.full((1, 4, 201), -10.0)
  logits[0, 0, 3] = 10        # car
  logits[0, 1, 149] = 10      # road
  logits[0, 2, 187] = 10      # sky
  logits[0, 3, 199] = 10      # tree: no class of ours
  masks = torch.full((1, 4, 32, 64), -20.0)      # stride 4 of a 128x256 frame
  masks[0, 1, 16:] = 2        # road: bottom half
  masks[0, 0, 12:24, 20:36] = 30                # car on the road (more confident than the road there)
  masks[0, 2, :8] = 20        # sky: top quarter
  masks[0, 3, 8:12, 48:] = 20
  pm = panoptic_from_outputs(logits, masks, PANOPTIC, CAM, 0.7)
  sem, inst = pm.semantic[0], pm.instance[0]
  assert sem[100, 10] == CLASS_ID["road"] and sem[10, 128] == CLASS_ID["sky"] and sem[40, 20] == IGNORE_ID
  assert sem[40, 220] == IGNORE_ID and inst[40, 220] == 0                      # tree
  car = inst == 1
  assert set(np.unique(inst)) == {0, 1} and (sem[car] == CLASS_ID["vehicle"]).all()
  ys, xs = np.nonzero(car)    # mask cells 12..23 x 20..35 → model pixels 48..95 x 80..143 (±1 at the edges)
  assert abs(ys.min() - 48) <= 1 and abs(ys.max() - 95) <= 1 and abs(xs.min() - 80) <= 1 and abs(xs.max() - 143) <= 1
  segs = {s.label: s for s in pm.segments[0]}
  assert segs["car"].instance == 1 and segs["road"].instance == 0 and segs["tree-merged"].cls == IGNORE_ID
  assert segs["car"].area == car.sum()


def test_detr_panoptic_teacher_on_frames(weights, sim, tmp_path):
  frames, _ = sim
  model = DetrForSegmentation.from_pretrained(weights / "detr-panoptic")
  model.detr.class_labels_classifier.bias.data[149] = 50.0    # every query: road
  model.save_pretrained(tmp_path / "detr-panoptic")
  teacher = load_teacher("detr-panoptic", tmp_path, config=CONFIGS["detr-panoptic"])
  pm = teacher(frames)
  assert pm.semantic.shape == pm.instance.shape == (2, CAM.height, CAM.width) and pm.semantic.dtype == np.uint8
  assert set(np.unique(pm.semantic)) <= {CLASS_ID["road"], IGNORE_ID} and (pm.instance == 0).all()
  assert sum(s.area for s in pm.segments[0]) == (pm.semantic[0] == CLASS_ID["road"]).sum()
  assert np.array_equal(teacher(frames).semantic, pm.semantic)


# ---- a recorded segment, end to end

def test_teachers_label_a_generated_segment(weights, tmp_path):
  """Device-camera video → calibrated warp → teachers: the frames they label line up with the model-frame render."""
  scene = make_scene(6, 0.1, camera="mici", scenario=dataclasses.replace(SCENARIOS["city"], noise=0.0))
  seg = Segment(write_segment(scene, tmp_path, progress=False))
  frames = np.stack([warp_rgb(f.nv12, warp_tables(seg.camera, f.calib_rpy, CAM, full_chroma=True))
                     for f in seg.frames()])
  assert frames.shape == (2, CAM.height, CAM.width, 3)
  truth = render_frame(scene, 1, CAM, (0, 0, 0)).rgb.astype(int)
  err = {(dy, dx): np.abs(np.roll(frames[1].astype(int), (dy, dx), (0, 1)) - truth)[4:-4, 4:-4].mean()
         for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
  assert min(err, key=err.get) == (0, 0) and err[0, 0] < 5    # video coding and resampling only, no offset
  depth = load_teacher("dpt-depth", weights, config=CONFIGS["dpt-depth"])(frames)
  assert depth.depth.shape == (2, CAM.height, CAM.width) and depth.camera == CAM
  dets = load_teacher("detr", weights, config=CONFIGS["detr"])(frames, depth=depth.depth)
  assert len(dets) == 2


# ---- real size

@pytest.mark.slow
def test_dinov2_small_real_size(tmp_path):
  """DINOv2 ViT-S/14 (random weights) at 224x448 through the full teacher path."""
  torch.manual_seed(0)
  Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                           patch_size=14, image_size=518)).save_pretrained(tmp_path / "dinov2")
  teacher = load_teacher("dinov2", tmp_path, config=DinoConfig(MEDMODEL, scale=224 / 256))
  scene = make_scene(4, 0.5, scenario="city")
  frames = np.stack([render_frame(scene, f, MEDMODEL, (0, 0, 0)).rgb for f in (2, 7)])
  maps = teacher(frames)
  assert teacher.size == (224, 448) and maps.features.shape == (2, 384, 16, 32) and maps.layer == 12
  assert np.isfinite(maps.features).all() and pca_rgb(maps).shape == (2, 256, 512, 3)
