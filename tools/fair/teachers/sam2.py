"""SAM 2 video teacher (Ravi et al., 2024; transformers Sam2VideoModel): box-prompted objects segmented and
tracked through a clip, streamed one frame at a time through the model's memory.

Frames go in as the official video preprocessing does it: the whole model frame resized to the network's
square input (image_size x image_size, 1024 for the released checkpoints; the aspect ratio is not kept),
ImageNet mean/std (Sam2VideoVideoProcessor: IMAGENET_DEFAULT_MEAN/STD). Box prompts in model-frame pixels
(pixel edges, as tools.fair.sim.gt) map to the network's pixel coordinates as CameraModel.scaled maps
centres, (x + 0.5) * s - 0.5 (SAM's prompt encoder adds the 0.5 back). The decoder's low-resolution mask
logits span the whole input, so one bilinear resize brings them back to the model frame; a mask is its
logits > 0 there.

Objects: boxes on the first frame (an argument, or from the config's `prompter`, e.g. a DETR teacher);
every `reprompt_every` frames the prompter runs again and a box whose IoU with every tracked object's
mask box (on the previous frame) is below `new_object_iou` starts a new object id.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Sam2VideoModel
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from tools.fair.teachers.base import Detections, TeacherInput, VideoMasks, default_dtype
from tools.fair.teachers.preprocess import check_clip, to_model_frame, to_network
from tools.fair.teachers.weights import WeightsInfo, load_pretrained, read_config

# a prompter maps uint8 RGB model frames (1, H, W, 3) to one Detections per frame (a DetrTeacher is one)
Prompter = Callable[[np.ndarray], Sequence[Detections]]
BoxPrompts = Detections | np.ndarray


@dataclass(frozen=True)
class Sam2TeacherConfig:
  """Input geometry and prompting of the SAM 2 video teacher."""
  camera: CameraModel = MEDMODEL     # input frames: uint8 RGB in this model frame
  prompter: Prompter | None = None   # boxes for the first frame when none are given, and for re-prompting
  reprompt_every: int = 0            # run the prompter every n frames to pick up new objects (0: first frame only)
  new_object_iou: float = 0.3        # a prompter box overlapping every tracked object less than this is a new object
  max_objects: int = 32              # objects per clip; each costs a mask decoder and a memory encoder per frame


def box_prompts(prompts: BoxPrompts | Sequence[Detections]) -> tuple[np.ndarray, tuple[str, ...]]:
  """(N, 4) float32 boxes x0 y0 x1 y1 in model-frame pixels and their labels from Detections (a prompter's
  first frame, labels = its classes) or a plain array (labels "box"); ValueError for malformed boxes."""
  if isinstance(prompts, (list, tuple)):
    prompts = prompts[0]
  if isinstance(prompts, Detections):
    boxes, labels = np.asarray(prompts.boxes, np.float32).reshape(-1, 4), tuple(prompts.classes)
  else:
    boxes = np.asarray(prompts, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise ValueError(f"box prompts must be (N, 4) x0, y0, x1, y1 model-frame pixels, got shape {boxes.shape}")
    labels = ("box",) * len(boxes)
  if not np.isfinite(boxes).all() or (boxes[:, 2:] <= boxes[:, :2]).any():
    raise ValueError(f"box prompts must be finite with x1 > x0 and y1 > y0, got {boxes.tolist()}")
  return boxes, labels


def nonempty(dets: Detections) -> Detections:
  """A prompter's detections without boxes of no area (a detector clamps boxes beyond the frame edge to
  zero width): they hold no object to prompt, and box_prompts refuses them."""
  b = np.asarray(dets.boxes, np.float32).reshape(-1, 4)
  keep = np.isfinite(b).all(1) & (b[:, 2:] > b[:, :2]).all(1)
  if keep.all():
    return dets
  return Detections(b[keep], np.asarray(dets.scores)[keep], tuple(c for c, k in zip(dets.classes, keep) if k),
                    np.asarray(dets.coco_ids)[keep], None if dets.positions is None else dets.positions[keep])


def boxes_to_network(boxes: np.ndarray, camera: CameraModel, size: tuple[int, int]) -> torch.Tensor:
  """Model-frame boxes (N, 4) → SAM prompt coordinates (N, 4) in the (size[0], size[1]) network input:
  continuous positions scale with the resize, pixel centres sit at integers ((x + 0.5) * s - 0.5)."""
  s = np.array([size[1] / camera.width, size[0] / camera.height] * 2, np.float32)
  return torch.from_numpy((np.asarray(boxes, np.float32) + 0.5) * s - 0.5)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
  """Boxes (K, 4) float32 on pixel edges (u_min - 0.5 .. u_max + 0.5) of masks (K, H, W); zeros for empty masks."""
  out = np.zeros((len(masks), 4), np.float32)
  for k, m in enumerate(masks):
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    if len(rows):
      out[k] = (cols[0] - 0.5, rows[0] - 0.5, cols[-1] + 0.5, rows[-1] + 0.5)
  return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU (N, M) of boxes a (N, 4) and b (M, 4); 0 where a box has no area."""
  a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
  w = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
  h = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
  inter = w * h
  area = lambda x: (x[..., 2] - x[..., 0]).clip(0) * (x[..., 3] - x[..., 1]).clip(0)  # noqa: E731
  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def instance_map(masks: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
  """(H, W) int32: ids[k] where mask k covers the pixel, the highest-scoring mask where several do, 0 elsewhere."""
  out = np.zeros(masks.shape[1:], np.int32)
  best = np.full(masks.shape[1:], -np.inf, np.float32)
  for k in range(len(masks)):
    win = masks[k] & (scores[k] > best)
    out[win], best[win] = ids[k], scores[k]
  return out


class ClipMasks:
  """Per-frame object masks gathered while streaming a clip, assembled into VideoMasks at the end.
  Objects may appear mid-clip (ids in order of first appearance); before that they are absent, score 0."""

  def __init__(self, camera: CameraModel, frames: int):
    self.camera, self.frames = camera, frames
    self.ids: list[int] = []
    self.labels: list[str] = []
    self.masks: dict[int, np.ndarray] = {}      # id -> (T, H, W) bool
    self.scores: dict[int, np.ndarray] = {}     # id -> (T,) float32

  def add_object(self, obj_id: int, label: str) -> None:
    """Register object `obj_id` (> 0) prompted by `label`."""
    self.ids.append(obj_id)
    self.labels.append(label)
    self.masks[obj_id] = np.zeros((self.frames, self.camera.height, self.camera.width), bool)
    self.scores[obj_id] = np.zeros(self.frames, np.float32)

  def set(self, t: int, obj_id: int, mask: np.ndarray, score: float) -> None:
    """Object `obj_id`'s mask (H, W) bool and confidence in [0, 1] on frame t."""
    self.masks[obj_id][t] = mask
    self.scores[obj_id][t] = score

  def drop(self, obj_id: int) -> None:
    """Forget object `obj_id` (e.g. a track the model itself withdrew)."""
    k = self.ids.index(obj_id)
    del self.ids[k], self.labels[k], self.masks[obj_id], self.scores[obj_id]

  def boxes(self, t: int) -> np.ndarray:
    """Mask boxes (K, 4) of every object on frame t."""
    return mask_boxes(np.stack([self.masks[i][t] for i in self.ids])) if self.ids else np.zeros((0, 4), np.float32)

  def result(self) -> VideoMasks:
    """The clip's VideoMasks; an object is present on a frame where its mask is not empty."""
    ids = np.asarray(self.ids, np.int32)
    t_, h_, w_ = self.frames, self.camera.height, self.camera.width
    masks = np.stack([self.masks[i] for i in self.ids], 1) if self.ids else np.zeros((t_, 0, h_, w_), bool)
    scores = np.stack([self.scores[i] for i in self.ids], 1) if self.ids else np.zeros((t_, 0), np.float32)
    presence = masks.any((2, 3))
    scores = np.where(presence, scores, 0).astype(np.float32)
    instance = np.stack([instance_map(masks[t], scores[t], ids) for t in range(t_)]) if t_ else \
      np.zeros((0, h_, w_), np.int32)
    return VideoMasks(instance, ids, presence, scores, tuple(self.labels), self.camera)


class Sam2Teacher:
  """SAM 2.1 box-prompted video object segmentation and tracking (tasks: "video_masks"); a video teacher."""
  name = "sam2"
  tasks = ("video_masks",)
  hf_ids = ("facebook/sam2.1-hiera-tiny", "facebook/sam2.1-hiera-small", "facebook/sam2.1-hiera-base-plus",
            "facebook/sam2.1-hiera-large")
  hf_revision = "main"

  def __init__(self, model: Sam2VideoModel, weights: WeightsInfo, config: Sam2TeacherConfig, device: str,
               dtype: torch.dtype):
    self.model, self.weights, self.config, self.device, self.dtype = model, weights, config, device, dtype
    self.size = (model.config.image_size, model.config.image_size)

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: Sam2TeacherConfig | None = None) -> Sam2Teacher:
    """The teacher from resolved weights (a Sam2VideoModel save_pretrained folder); dtype None: bf16/fp16 on GPU."""
    dtype = dtype or default_dtype(device)
    # the official repositories hold one config for the image and the video model; accept either model type
    found = read_config(weights).get("model_type")
    model = load_pretrained(Sam2VideoModel, weights, found if found in ("sam2", "sam2_video") else "sam2_video",
                            device, dtype)
    return cls(model, weights, config or Sam2TeacherConfig(), device, dtype)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera, clip=0)

  def _session(self) -> Sam2VideoInferenceSession:
    return Sam2VideoInferenceSession(video_height=self.size[0], video_width=self.size[1], inference_device=self.device,
                                     inference_state_device=self.device, video_storage_device=self.device,
                                     dtype=self.dtype)

  def _prompts(self, frames: np.ndarray, t: int, prompts: BoxPrompts | None) -> tuple[np.ndarray, tuple[str, ...]]:
    cfg = self.config
    if t == 0 and prompts is not None:
      return box_prompts(prompts)
    if cfg.prompter is not None and (t == 0 or (cfg.reprompt_every > 0 and t % cfg.reprompt_every == 0)):
      return box_prompts(nonempty(cfg.prompter(frames[t:t + 1])[0]))
    return np.zeros((0, 4), np.float32), ()

  @torch.inference_mode()
  def __call__(self, clip: np.ndarray, prompts: BoxPrompts | None = None) -> VideoMasks:
    """Masks of the objects prompted by `prompts` (boxes (N, 4) in model-frame pixels, or Detections) on the
    first frame of `clip` (1, T, H, W, 3) uint8 RGB, tracked through its T frames; without prompts the
    config's prompter gives the first frame's boxes. A clip without any prompt yields no objects."""
    cam, cfg = self.config.camera, self.config
    frames = check_clip(clip, cam)
    out = ClipMasks(cam, len(frames))
    session = self._session()
    for t in range(len(frames)):
      session.add_new_frame(to_network(frames[t:t + 1], cam, self.size, self.device, self.dtype)[0], t)
      boxes, labels = self._prompts(frames, t, prompts)
      if len(boxes) and out.ids:
        # objects already tracked (t > 0): only boxes that overlap none of them on the previous frame are new
        new = (box_iou(boxes, out.boxes(t - 1)) < cfg.new_object_iou).all(1)
        boxes, labels = boxes[new], tuple(lab for lab, n in zip(labels, new) if n)
      room = cfg.max_objects - len(out.ids)
      if len(boxes):
        self._add_objects(session, out, t, boxes[:room], labels[:room])
      if out.ids:
        self._track(session, out, t)
      # streaming: only the current frame's pixels are needed (its features are cached); keep an empty entry, as
      # the session's frame count sets how many past object pointers the memory attention reads
      session.processed_frames[t] = session.processed_frames[t].new_empty(0)
    return out.result()

  def _add_objects(self, session: Sam2VideoInferenceSession, out: ClipMasks, t: int, boxes: np.ndarray,
                   labels: tuple[str, ...]) -> None:
    coords = boxes_to_network(boxes, self.config.camera, self.size).view(-1, 1, 1, 2, 2).to(self.device)
    new_ids = []
    for k, label in enumerate(labels):
      obj_id = len(out.ids) + 1
      # a box is SAM's two corner points with labels 2 (top-left) and 3 (bottom-right)
      session.add_point_inputs(session.obj_id_to_idx(obj_id), t, {
        "point_coords": coords[k], "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32, device=self.device)})
      out.add_object(obj_id, label)
      new_ids.append(obj_id)
    session.obj_with_new_inputs = new_ids

  def _track(self, session: Sam2VideoInferenceSession, out: ClipMasks, t: int) -> None:
    res = self.model(inference_session=session, frame_idx=t)
    masks = to_model_frame(res.pred_masks.reshape(-1, 1, *res.pred_masks.shape[-2:]), self.config.camera)[:, 0] > 0
    scores = res.object_score_logits.float().reshape(-1).sigmoid()
    for obj_id, m, s in zip(res.object_ids, masks.cpu().numpy(), scores.cpu().tolist()):
      out.set(t, obj_id, m, s)
