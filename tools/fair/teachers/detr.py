"""DETR teachers (Carion et al., 2020): COCO detection mapped to driving classes, and panoptic segmentation
mapped to our semantic classes (transformers DetrForObjectDetection / DetrForSegmentation).

Labels are resolved by name through the checkpoint's id2label. In the 91-id COCO space DETR predicts in,
the driving classes are person 1, bicycle 2, car 3, motorcycle 4, bus 6, truck 8, traffic light 10 and
stop sign 13; the last logit of every query is "no object". Boxes come as normalised (cx, cy, w, h) of
the network input, which spans the model frame exactly, so model-frame pixels are x * W - 0.5 (pixel
centres at integers, boxes on pixel edges, as in tools.fair.sim.gt).

The official checkpoints' main revisions build a timm ResNet, and timm needs torchvision, which this
project does not install; facebook/detr-resnet-50 and -101 publish a "no_timm" revision with the
transformers ResNet instead, which is what the detection teacher loads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrForSegmentation

from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, MEDMODEL, CameraModel
from selfdrive.modeld_fair.classes import CLASS_ID, IGNORE_ID
from selfdrive.modeld_fair.model_io import OBJECT_SEMANTIC_IDS
from tools.fair.data.box_distance import depth_in_box
from tools.fair.teachers.base import Detections, PanopticMaps, Segment, TeacherInput, default_dtype
from tools.fair.teachers.preprocess import network_size, to_model_frame, to_network
from tools.fair.teachers.weights import WeightsInfo, check_model_type, load_pretrained

DRIVING_CLASSES = ("car", "truck", "bus", "motorcycle", "bicycle", "person", "traffic light", "stop sign")
# our semantic class of each COCO (panoptic) label we use; every other label maps to IGNORE_ID. Two-wheelers
# count as vehicles (road users to keep clear of); COCO has no lane markings or road edges (paint is "road").
COCO_TO_SEMANTIC = {
  "car": "vehicle", "truck": "vehicle", "bus": "vehicle", "motorcycle": "vehicle", "bicycle": "vehicle",
  "person": "pedestrian", "traffic light": "pole_sign", "stop sign": "pole_sign",
  "road": "road", "pavement-merged": "terrain", "grass-merged": "terrain", "dirt-merged": "terrain",
  "gravel": "terrain", "sand": "terrain", "sky-other-merged": "sky",
}


@dataclass(frozen=True)
class DetrTeacherConfig:
  """Input geometry and thresholds of the DETR teachers."""
  camera: CameraModel = MEDMODEL   # input frames: uint8 RGB in this model frame
  scale: float = 2.5               # MEDMODEL → 640x1280, about DETR's training resize (short side 800, long
                                   # side at most 1333): distant cars cover only a few model-frame pixels
  threshold: float = 0.7           # class score a query needs; pseudo-labels favour precision


def _check_checkpoint(weights: WeightsInfo) -> dict[int, str]:
  """The checkpoint's id2label, after refusing timm backbones and label sets without the driving classes."""
  check_model_type(weights, "detr")
  config = DetrConfig.from_pretrained(weights.path)
  if config.backbone_config.model_type == "timm_backbone":
    raise ValueError(f"{weights.path}: this DETR checkpoint builds a timm backbone (timm needs torchvision, which "
                     "this project does not install); use the 'no_timm' revision, e.g. "
                     f"hf download facebook/detr-resnet-50 --revision no_timm --local-dir {weights.path}")
  id2label = {int(i): name for i, name in config.id2label.items()}
  missing = sorted(set(DRIVING_CLASSES) - set(id2label.values()))
  if missing:
    raise ValueError(f"{weights.path}: labels {missing} missing from id2label: not a COCO-trained DETR")
  return id2label


def _load(model_class, weights: WeightsInfo, device: str, dtype: torch.dtype | None):
  id2label = _check_checkpoint(weights)
  dtype = dtype or default_dtype(device)
  return load_pretrained(model_class, weights, "detr", device, dtype), id2label, dtype


def detections_from_outputs(logits: torch.Tensor, boxes: torch.Tensor, id2label: dict[int, str],
                            camera: CameraModel, threshold: float) -> list[Detections]:
  """DETR logits (B, Q, K + 1) and normalised cxcywh boxes (B, Q, 4) → driving-class detections in `camera`
  pixels: queries whose best real class is a driving class with softmax score above `threshold`."""
  scores, ids = logits.float().softmax(-1)[..., :-1].max(-1)
  size = torch.tensor([camera.width, camera.height] * 2, dtype=torch.float32)
  out = []
  for s, i, b in zip(scores.cpu(), ids.cpu(), boxes.float().cpu()):
    keep = [q for q in torch.argsort(s, descending=True, stable=True).tolist()
            if s[q] > threshold and id2label[int(i[q])] in DRIVING_CLASSES]
    cx, cy, w, h = b[keep].unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * size - 0.5
    xyxy = torch.minimum(xyxy.clamp_min(-0.5), size - 0.5)
    out.append(Detections(xyxy.numpy().reshape(-1, 4), s[keep].numpy(), tuple(id2label[int(i[q])] for q in keep),
                          i[keep].numpy().astype(np.int64), None))
  return out


def road_positions(boxes: np.ndarray, depth: np.ndarray, camera: CameraModel,
                   height: float = DEFAULT_CAMERA_HEIGHT) -> np.ndarray:
  """Road-frame points (N, 3) for model-frame boxes (N, 4) given one frame's depth map (H, W).

  Depth: the median finite depth over the box's central half (its corners mostly see what is behind or
  beside the object); point: the box's bottom-centre (its contact with the road) at that depth:
  x = d, y = (u - cx) d / f, z = (v - cy) d / f - height (the camera is `height` m above the road).
  Rows are NaN where the box holds no known depth (data.box_distance.depth_in_box).
  """
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  d = depth_in_box(b, np.asarray(depth, np.float32)).astype(np.float64)
  u, v = (b[:, 0] + b[:, 2]) / 2, b[:, 3]
  return np.stack([d, (u - camera.cx) / camera.focal * d, (v - camera.cy) / camera.focal * d - height], 1).astype(np.float32)


class _Detr:
  """What both DETR teachers share: loading one transformers DETR class and the input size."""
  model_class: type

  def __init__(self, model, weights: WeightsInfo, config: DetrTeacherConfig, id2label: dict[int, str], device: str,
               dtype: torch.dtype):
    self.model, self.weights, self.config, self.id2label = model, weights, config, id2label
    self.device, self.dtype = device, dtype
    # stride 32 (the ResNet's): feature grids, and the panoptic head's stride-4 masks, span the whole input
    self.size = network_size(config.camera, config.scale, 32)

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: DetrTeacherConfig | None = None):
    """The teacher from resolved weights; dtype None picks bf16/fp16 on GPU, fp32 on CPU."""
    model, id2label, dtype = _load(cls.model_class, weights, device, dtype)
    return cls(model, weights, config or DetrTeacherConfig(), id2label, device, dtype)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera)


class DetrTeacher(_Detr):
  """DETR object detection → driving classes, boxes in model-frame pixels (tasks: "detection")."""
  name = "detr"
  tasks = ("detection",)
  hf_ids = ("facebook/detr-resnet-50", "facebook/detr-resnet-101")
  hf_revision = "no_timm"
  model_class = DetrForObjectDetection

  @torch.inference_mode()
  def __call__(self, frames: np.ndarray, depth: np.ndarray | None = None,
               height: float = DEFAULT_CAMERA_HEIGHT) -> list[Detections]:
    """Detections of uint8 RGB (B, H, W, 3) model frames; with model-frame depth (B, H, W) in metres (a
    depth teacher's or ground truth), also road-frame positions for a camera `height` m above the road."""
    cam = self.config.camera
    if depth is not None and np.shape(depth) != (len(frames), cam.height, cam.width):
      raise ValueError(f"depth must be (B, {cam.height}, {cam.width}) for {len(frames)} frames, got {np.shape(depth)}")
    out = self.model(pixel_values=to_network(frames, cam, self.size, self.device, self.dtype))
    dets = detections_from_outputs(out.logits, out.pred_boxes, self.id2label, cam, self.config.threshold)
    if depth is None:
      return dets
    return [Detections(d.boxes, d.scores, d.classes, d.coco_ids, road_positions(d.boxes, z, cam, height))
            for d, z in zip(dets, depth)]


def semantic_lookup(id2label: dict[int, str], num_labels: int) -> torch.Tensor:
  """Our class id of every label id (and of the no-object id `num_labels`): COCO_TO_SEMANTIC or IGNORE_ID."""
  lut = torch.full((num_labels + 1,), IGNORE_ID, dtype=torch.long)
  for i, name in id2label.items():
    if name in COCO_TO_SEMANTIC:
      lut[i] = CLASS_ID[COCO_TO_SEMANTIC[name]]
  return lut


def panoptic_from_outputs(logits: torch.Tensor, masks: torch.Tensor, id2label: dict[int, str],
                          camera: CameraModel, threshold: float) -> PanopticMaps:
  """DETR panoptic logits (B, Q, K + 1) and mask logits (B, Q, h, w) spanning the input → model-frame maps.

  As DETR's panoptic post-processing: queries whose best class (no-object included) is a real class
  scoring above `threshold` compete for each pixel by score x mask probability; a pixel whose winner's
  mask probability is at most 0.5 stays unlabelled (IGNORE_ID). Vehicle and pedestrian segments get
  instance ids 1..n per frame in query order.
  """
  scores, ids = logits.float().softmax(-1).max(-1)
  no_object = logits.shape[-1] - 1
  lut = semantic_lookup(id2label, no_object).to(ids.device)
  b_, h_, w_ = len(logits), camera.height, camera.width
  semantic = np.full((b_, h_, w_), IGNORE_ID, np.uint8)
  instance = np.zeros((b_, h_, w_), np.int32)
  segments = []
  for b in range(b_):
    q = torch.nonzero((ids[b] != no_object) & (scores[b] > threshold))[:, 0]
    frame_segments = []
    if len(q):
      prob = to_model_frame(masks[b, q][None], camera)[0].sigmoid()             # (n, H, W)
      owner = (scores[b, q][:, None, None] * prob).argmax(0)
      covered = prob.gather(0, owner[None])[0] > 0.5
      cls = lut[ids[b, q]]
      area = torch.bincount(owner[covered], minlength=len(q)).tolist()
      inst = torch.zeros(len(q), dtype=torch.long)
      for k in range(len(q)):
        if area[k] == 0:
          continue
        if int(cls[k]) in OBJECT_SEMANTIC_IDS:
          inst[k] = int(inst.max()) + 1
        frame_segments.append(Segment(int(inst[k]), id2label[int(ids[b, q[k]])], int(cls[k]), float(scores[b, q[k]]),
                                      area[k]))
      semantic[b] = torch.where(covered, cls[owner], IGNORE_ID).cpu().numpy()
      instance[b] = torch.where(covered, inst.to(owner.device)[owner], 0).cpu().numpy()
    segments.append(tuple(frame_segments))
  return PanopticMaps(semantic, instance, segments, camera)


class DetrPanopticTeacher(_Detr):
  """DETR panoptic segmentation → our semantic classes + vehicle / pedestrian instances (tasks: "panoptic")."""
  name = "detr-panoptic"
  tasks = ("panoptic",)
  hf_ids = ("facebook/detr-resnet-50-panoptic", "facebook/detr-resnet-101-panoptic")
  hf_revision = "main"
  model_class = DetrForSegmentation

  @torch.inference_mode()
  def __call__(self, frames: np.ndarray) -> PanopticMaps:
    """Panoptic maps of uint8 RGB (B, H, W, 3) model frames, at model-frame resolution."""
    out = self.model(pixel_values=to_network(frames, self.config.camera, self.size, self.device, self.dtype))
    return panoptic_from_outputs(out.logits, out.pred_masks, self.id2label, self.config.camera, self.config.threshold)
