"""SAM 2 / SAM 3 video teachers: tiny random models of the real classes, saved with save_pretrained and loaded
through the teachers' own weights path with the hub offline, run on generated clips in the model frame."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before huggingface_hub reads it: nothing may be downloaded

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import (CLIPTokenizerFast, Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel,  # noqa: E402
                          Sam2VisionConfig, Sam3Config, Sam3VideoConfig, Sam3VideoModel, Sam3ViTConfig,
                          Sam3VisionConfig)
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from tools.fair.sim import make_scene, render_frame  # noqa: E402
from tools.fair.teachers import MissingWeightsError, resolve_weights  # noqa: E402
from tools.fair.teachers.base import Detections  # noqa: E402
from tools.fair.teachers.preprocess import to_model_frame, to_network  # noqa: E402
from tools.fair.teachers.sam3 import Sam3Teacher, Sam3TeacherConfig, to_sam3_network  # noqa: E402
from tools.fair.teachers.sam2 import (Sam2TeacherConfig, Sam2Teacher, box_iou, box_prompts, boxes_to_network,  # noqa: E402
                                      instance_map, mask_boxes)

CAM = MEDMODEL.scaled(0.25)   # 128x64: the model frame at quarter resolution keeps every test small
S2 = 128                      # tiny SAM 2 input (image_size x image_size)
S3 = 56                       # tiny SAM 3 input: 4x4 patches of 14


def _sam2(size: int = S2) -> Sam2VideoModel:
  """A tiny Sam2VideoModel whose heads say "present" and lean positive, so random masks are neither blanked out
  (object score <= 0) nor empty."""
  hiera = Sam2HieraDetConfig(hidden_size=16, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                             num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[2, 2, 2, 2],
                             global_attention_blocks=[3], image_size=[size, size],
                             window_positional_embedding_background_size=[2, 2])
  vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=128,
                            backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2])
  config = Sam2VideoConfig(
    vision_config=vision, prompt_encoder_config=dict(hidden_size=128, image_size=size, patch_size=16),
    mask_decoder_config=dict(hidden_size=128, num_hidden_layers=1, num_attention_heads=2, mlp_dim=64,
                             iou_head_hidden_dim=32),
    image_size=size, memory_attention_hidden_size=128, memory_attention_num_layers=1,
    memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[size // 16] * 2,
    memory_encoder_hidden_size=128, memory_encoder_output_channels=64, mask_downsampler_embed_dim=128,
    memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64, num_maskmem=3)
  torch.manual_seed(0)
  model = Sam2VideoModel(config)
  model.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(5.0)
  for mlp in model.mask_decoder.output_hypernetworks_mlps:
    mlp.proj_out.bias.data.fill_(0.1)
  return model


def _sam3() -> Sam3VideoModel:
  """A tiny Sam3VideoModel whose detector scores every query 0.98 for any text, so the random model detects."""
  feats = [[S3 // 14 * 4] * 2, [S3 // 14 * 2] * 2, [S3 // 14] * 2]
  vit = Sam3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=S3,
                      patch_size=14, window_size=2, global_attn_indexes=[1])
  small = dict(num_attention_heads=4, intermediate_size=64)
  detector = Sam3Config(
    vision_config=Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=128, backbone_feature_sizes=feats),
    text_config=dict(vocab_size=600, hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                     num_attention_heads=4, max_position_embeddings=32, bos_token_id=512, eos_token_id=513,
                     pad_token_id=513),
    geometry_encoder_config=dict(hidden_size=128, num_layers=1, **small),
    detr_encoder_config=dict(hidden_size=128, num_layers=1, **small),
    detr_decoder_config=dict(hidden_size=128, num_layers=1, num_queries=1, **small),
    mask_decoder_config=dict(hidden_size=128, num_upsampling_stages=2))
  tracker = dict(
    model_type="sam3_tracker_video", image_size=S3,
    vision_config=dict(model_type="sam3_vision_model", backbone_config=vit.to_dict(), fpn_hidden_size=128,
                       backbone_feature_sizes=feats),
    prompt_encoder_config=dict(hidden_size=128, image_size=S3, patch_size=14),
    mask_decoder_config=dict(hidden_size=128, num_hidden_layers=1, num_attention_heads=2, mlp_dim=64,
                             iou_head_hidden_dim=32),
    memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
    memory_attention_rope_feat_sizes=[S3 // 14] * 2, memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
    mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64, num_maskmem=3)
  torch.manual_seed(0)
  model = Sam3VideoModel(Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=S3 // 14 * 4,
                                         hotstart_delay=2, hotstart_unmatch_thresh=1, hotstart_dup_thresh=1))
  scoring = model.detector_model.dot_product_scoring
  for proj in (scoring.query_proj, scoring.text_proj):    # constant query . text score: 12 (clamped) → 0.99994
    proj.weight.data.zero_()
    proj.bias.data.fill_(1.0)
  model.detector_model.detr_decoder.presence_head.layer3.bias.data.fill_(4.0)
  return model


def _clip_tokenizer() -> CLIPTokenizerFast:
  """A CLIP BPE tokenizer over single bytes (as the real one starts) plus a few merges: real code path, tiny vocab."""
  chars = list(bytes_to_unicode().values())
  vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
  vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513, "ca": 514, "car</w>": 515}
  return CLIPTokenizerFast(vocab=vocab, merges=[("c", "a"), ("ca", "r</w>")])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A weights DIR with tiny random SAM checkpoints in the official folder layout."""
  root = tmp_path_factory.mktemp("weights")
  _sam2().save_pretrained(root / "sam2")
  _sam3().save_pretrained(root / "sam3")
  _clip_tokenizer().save_pretrained(root / "sam3")
  return root


@pytest.fixture(scope="module")
def clip():
  """Four consecutive frames of a generated city segment in the model frame, and the actors' boxes on frame 0."""
  scene = make_scene(4, 0.5, scenario="city")
  renders = [render_frame(scene, f, CAM, (0, 0, 0)) for f in range(2, 6)]
  ids = [i for i in np.unique(renders[0].instance) if i > 0]
  boxes = mask_boxes(np.stack([renders[0].instance == i for i in ids]))
  return np.stack([r.rgb for r in renders])[None], boxes[(boxes[:, 2] - boxes[:, 0]) >= 4]


def load_sam2(weights, **kw) -> Sam2Teacher:
  return Sam2Teacher.load(resolve_weights("sam2", Sam2Teacher.hf_ids, weights), config=Sam2TeacherConfig(CAM, **kw))


# ---- geometry

def test_box_geometry_helpers():
  masks = np.zeros((3, 10, 20), bool)
  masks[0, 2:5, 3:9] = True
  masks[1, 0, 19] = True
  np.testing.assert_array_equal(mask_boxes(masks), [[2.5, 1.5, 8.5, 4.5], [18.5, -0.5, 19.5, 0.5], [0, 0, 0, 0]])
  iou = box_iou(np.array([[0, 0, 10, 10], [0, 0, 0, 0]]), np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]]))
  np.testing.assert_allclose(iou, [[1 / 3, 1, 0], [0, 0, 0]])
  inst = instance_map(masks[[0, 0, 1]], np.array([0.2, 0.9, 0.5]), np.array([4, 7, 9]))
  assert inst[3, 5] == 7 and inst[0, 19] == 9 and (inst[masks[0]] == 7).all() and (inst == 0).sum() == 200 - 19


def test_box_prompts_accept_detections_and_refuse_bad_boxes():
  det = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9], np.float32), ("car",),
                   np.array([3]), None)
  boxes, labels = box_prompts([det])
  assert labels == ("car",) and boxes.tolist() == [[1, 2, 30, 40]]
  assert box_prompts(np.array([[0, 0, 5, 5.0]]))[1] == ("box",)
  with pytest.raises(ValueError, match=r"\(N, 4\)"):
    box_prompts(np.zeros(4))
  with pytest.raises(ValueError, match="x1 > x0"):
    box_prompts(np.array([[5, 0, 5, 5.0]]))


@settings(max_examples=25, deadline=None)
@given(x0=st.integers(0, 100), y0=st.integers(0, 44), w=st.integers(8, 27), h=st.integers(8, 19))
def test_boxes_and_masks_map_there_and_back(x0, y0, w, h):
  """A model-frame box drawn as a mask and resized to the square network input lands where boxes_to_network puts
  the box; network-resolution masks resized back land on the model-frame box."""
  mask = np.zeros((1, CAM.height, CAM.width, 3), np.uint8)
  mask[0, y0:y0 + h, x0:x0 + w] = 255
  box = mask_boxes(mask[..., 0] > 0)
  x = to_network(mask, CAM, (S2, S2), "cpu", torch.float32)[0, 0]     # 2x wider, 2x taller pixels
  net = (x > x.min() + 0.5 * (x.max() - x.min())).numpy()[None]
  np.testing.assert_allclose(mask_boxes(net), boxes_to_network(box, CAM, (S2, S2)).numpy(), atol=0.51)
  low = F.interpolate(torch.from_numpy(net[None]).float() * 2 - 1, size=(S2 // 4, S2 // 4), mode="bilinear",
                      align_corners=False, antialias=True)             # the decoder's low-resolution logits
  back = to_model_frame(low, CAM)[0] > 0
  # A logit cell spans 4x2 model pixels; next to the image border the antialiased downsampling above is truncated
  # and biased, so allow half a cell per axis.
  half_cell = np.array([CAM.width, CAM.height, CAM.width, CAM.height]) / (S2 // 4) / 2
  assert np.all(np.abs(mask_boxes(back.numpy()) - box) <= half_cell + 0.01), (mask_boxes(back.numpy()), box)


# ---- SAM 2

def test_sam2_tracks_prompted_boxes_through_a_clip(weights, clip):
  frames, boxes = clip
  teacher = load_sam2(weights)
  assert teacher.input.clip == 0 and teacher.input.camera == CAM and teacher.size == (S2, S2)
  assert teacher.weights.path == weights / "sam2"
  vm = teacher(frames, prompts=boxes)
  t_, k_ = frames.shape[1], len(boxes)
  assert vm.instance.shape == (t_, CAM.height, CAM.width) and vm.instance.dtype == np.int32
  assert vm.ids.tolist() == list(range(1, k_ + 1)) and vm.ids.dtype == np.int32 and vm.labels == ("box",) * k_
  assert vm.presence.shape == vm.scores.shape == (t_, k_) and vm.presence.dtype == bool
  assert vm.scores.dtype == np.float32 and ((vm.scores >= 0) & (vm.scores <= 1)).all()
  assert vm.presence.any() and vm.camera == CAM
  for t in range(t_):
    assert set(np.unique(vm.instance[t])) <= {0, *vm.ids.tolist()}
    for k, i in enumerate(vm.ids):
      if (vm.instance[t] == i).any():
        assert vm.presence[t, k]               # a visible pixel implies presence
    assert (vm.scores[t][~vm.presence[t]] == 0).all() and (vm.scores[t][vm.presence[t]] > 0.5).all()
  again = teacher(frames, prompts=boxes)       # deterministic, and a new session per clip
  assert np.array_equal(again.instance, vm.instance) and np.array_equal(again.scores, vm.scores)
  assert len(teacher(frames).ids) == 0         # no prompts, no prompter: nothing to track
  with pytest.raises(ValueError, match=r"\(1, T, 64, 128, 3\)"):
    teacher(frames[0])


def test_sam2_reprompt_adds_only_new_objects(weights, clip):
  frames, boxes = clip
  first = load_sam2(weights)(frames[:, :2], prompts=boxes[:1])
  tracked = mask_boxes(first.instance[1:] == 1)[0]             # object 1's mask box on frame 1
  assert tracked[2] > tracked[0]
  far = np.array([[0.0, 0.0, 6.0, 6.0]] if tracked[0] > 12 else [[CAM.width - 7.0, CAM.height - 7.0, CAM.width - 1.0,
                                                                    CAM.height - 1.0]])
  assert box_iou(far, tracked[None])[0, 0] < 0.3
  calls = []

  def prompter(frame):
    calls.append(frame.shape)
    if len(calls) == 1:
      return [Detections(boxes[:1], np.ones(1, np.float32), ("car",), np.array([3]), None)]
    # frame 2: object 1 again (its tracked box) and one far away from it
    return [Detections(np.concatenate([tracked[None], far]).astype(np.float32), np.ones(2, np.float32),
                       ("car", "person"), np.array([3, 1]), None)]

  vm = load_sam2(weights, prompter=prompter, reprompt_every=2)(frames[:, :3])
  assert calls == [(1, CAM.height, CAM.width, 3)] * 2                     # frames 0 and 2
  assert vm.ids.tolist() == [1, 2] and vm.labels == ("car", "person")
  assert not vm.presence[:2, 1].any() and (vm.scores[:2, 1] == 0).all()  # object 2 exists from frame 2 on
  assert np.array_equal(vm.instance[:2], first.instance)                 # the first object is tracked as before


def test_sam2_missing_weights_name_official_id_and_path(tmp_path):
  with pytest.raises(MissingWeightsError) as e:
    resolve_weights("sam2", Sam2Teacher.hf_ids, tmp_path)
  assert str(tmp_path / "sam2") in str(e.value) and "facebook/sam2.1-hiera-tiny" in str(e.value)


# ---- SAM 3

def test_sam3_preprocessing_uses_half_mean_and_std():
  frame = np.zeros((1, CAM.height, CAM.width, 3), np.uint8)
  frame[0, :, 64:] = 255
  x = to_sam3_network(frame, CAM, (S3, S3), "cpu", torch.float32)
  assert x.shape == (1, 3, S3, S3)
  np.testing.assert_allclose(x[0, :, :, :26].numpy(), -1, atol=1e-5)   # black → -1, white → +1
  np.testing.assert_allclose(x[0, :, :, 30:].numpy(), 1, atol=1e-5)


def test_sam3_segments_and_tracks_text_prompts(weights, clip):
  frames = clip[0][:, :3]
  info = resolve_weights("sam3", Sam3Teacher.hf_ids, weights)
  teacher = Sam3Teacher.load(info, config=Sam3TeacherConfig(CAM, prompts=("car",)))
  assert teacher.input.clip == 0 and teacher.size == (S3, S3)
  vm = teacher(frames)
  t_, k_ = frames.shape[1], len(vm.ids)
  assert k_ > 0 and (vm.ids > 0).all() and vm.ids.dtype == np.int32 and len(set(vm.ids.tolist())) == k_
  assert vm.labels == ("car",) * k_ and vm.camera == CAM
  assert vm.instance.shape == (t_, CAM.height, CAM.width) and vm.presence.shape == vm.scores.shape == (t_, k_)
  assert ((vm.scores >= 0) & (vm.scores <= 1)).all() and (vm.scores[~vm.presence] == 0).all()
  for t in range(t_):
    assert set(np.unique(vm.instance[t])) <= {0, *vm.ids.tolist()}
    for k, i in enumerate(vm.ids):
      assert not (vm.instance[t] == i).any() or vm.presence[t, k]
  assert vm.presence.any(1).all()              # every kept object is seen on some frame
  again = teacher(frames)                      # deterministic, and a new session per clip
  assert np.array_equal(again.ids, vm.ids) and np.array_equal(again.instance, vm.instance)
  default = Sam3Teacher.load(info, config=Sam3TeacherConfig(CAM))
  assert default.config.prompts == ("car", "pedestrian", "traffic cone")
  assert set(default(frames[:, :1]).labels) == {"car", "pedestrian", "traffic cone"}   # the detector fires on all
  with pytest.raises(ValueError, match="at least one text prompt"):
    Sam3Teacher.load(info, config=Sam3TeacherConfig(CAM, prompts=()))


def test_sam3_missing_weights_or_tokenizer_name_official_id_and_path(weights, tmp_path):
  with pytest.raises(MissingWeightsError) as e:
    resolve_weights("sam3", Sam3Teacher.hf_ids, tmp_path)
  assert str(tmp_path / "sam3") in str(e.value) and "facebook/sam3" in str(e.value)
  (tmp_path / "sam3").mkdir()
  for f in ("config.json", "model.safetensors"):       # weights without the tokenizer files
    (tmp_path / "sam3" / f).write_bytes((weights / "sam3" / f).read_bytes())
  with pytest.raises(MissingWeightsError, match="no tokenizer") as e:
    Sam3Teacher.load(resolve_weights("sam3", Sam3Teacher.hf_ids, tmp_path))
  assert str(tmp_path / "sam3") in str(e.value) and "facebook/sam3" in str(e.value)


# ---- real size

@pytest.mark.slow
def test_sam2_hiera_tiny_real_size(tmp_path):
  """SAM 2.1 hiera-tiny's architecture (Sam2VideoConfig's defaults are facebook/sam2.1-hiera-tiny's; random weights)
  at 1024x1024 on three MEDMODEL frames through the full teacher path."""
  torch.manual_seed(0)
  Sam2VideoModel(Sam2VideoConfig()).save_pretrained(tmp_path / "sam2")
  teacher = Sam2Teacher.load(resolve_weights("sam2", Sam2Teacher.hf_ids, tmp_path), config=Sam2TeacherConfig())
  scene = make_scene(4, 0.5, scenario="city")
  frames = np.stack([render_frame(scene, f, MEDMODEL, (0, 0, 0)).rgb for f in (2, 3, 4)])[None]
  vm = teacher(frames, prompts=np.array([[200.0, 100.0, 260.0, 140.0], [10.0, 120.0, 60.0, 200.0]]))
  assert teacher.size == (1024, 1024) and vm.instance.shape == (3, 256, 512) and vm.ids.tolist() == [1, 2]
  assert vm.presence.shape == (3, 2) and ((vm.scores >= 0) & (vm.scores <= 1)).all()
