"""SAM 3 video teacher (Carion et al., 2025; transformers Sam3VideoModel): text-prompted ("car", "pedestrian",
...) detection, segmentation and tracking of every matching object through a clip, streamed one frame at a time.

Sam3VideoModel is driven directly through its streaming session (Sam3VideoInferenceSession + forward(frame=...)):
it runs the detector for every text prompt on each frame, matches detections to the SAM 2-style tracker's
masklets, starts new ids and withdraws tracks itself, so nothing of that logic is re-implemented here. The
one piece of the official propagation loop reproduced is its hotstart hindsight: propagate_in_video_iterator
holds outputs back `hotstart_delay` frames and hides tracks the model withdraws meanwhile; offline we see the
whole clip, so a track withdrawn on frame t is hidden from frame t - hotstart_delay on.

Preprocessing as Sam3ImageProcessor: the whole model frame resized to the square network input (1008 for
facebook/sam3; aspect not kept), mean = std = 0.5 (IMAGENET_STANDARD_MEAN/STD); text through the checkpoint's
CLIP tokenizer padded to 32 tokens (Sam3VideoProcessor.add_text_prompt). Low-resolution mask logits span the
input and come back to the model frame with one bilinear resize; a mask is its logits > 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import CLIPTokenizerFast, Sam3VideoModel
from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from tools.fair.teachers.base import TeacherInput, VideoMasks, default_dtype
from tools.fair.teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_clip, to_model_frame, to_network
from tools.fair.teachers.sam2 import ClipMasks
from tools.fair.teachers.weights import MissingWeightsError, WeightsInfo, load_pretrained

DEFAULT_PROMPTS = ("car", "pedestrian", "traffic cone")
SAM3_MEAN = SAM3_STD = (0.5, 0.5, 0.5)   # Sam3ImageProcessor: IMAGENET_STANDARD_MEAN / _STD
TEXT_LENGTH = 32                         # Sam3VideoProcessor.add_text_prompt pads every prompt to 32 tokens
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


@dataclass(frozen=True)
class Sam3TeacherConfig:
  """Input geometry and text prompts of the SAM 3 video teacher."""
  camera: CameraModel = MEDMODEL                 # input frames: uint8 RGB in this model frame
  prompts: tuple[str, ...] = DEFAULT_PROMPTS     # noun phrases; each object's label is the prompt that found it


def load_tokenizer(weights: WeightsInfo, hf_id: str) -> CLIPTokenizerFast:
  """The CLIP tokenizer saved beside the weights (the official repository holds both); MissingWeightsError naming
  the official id and the folder when its files are absent."""
  if not any(all((weights.path / f).is_file() for f in files) for files in TOKENIZER_FILES):
    raise MissingWeightsError(
      f"no tokenizer for teacher {weights.teacher!r}: expected tokenizer.json (or vocab.json + merges.txt) in "
      f"{weights.path}\n  official weights and tokenizer: {hf_id} (https://huggingface.co/{hf_id})\n"
      f"  fetch with: hf download {hf_id} --local-dir {weights.path}")
  return CLIPTokenizerFast.from_pretrained(weights.path)


def to_sam3_network(frames: np.ndarray, camera: CameraModel, size: tuple[int, int], device: str | torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
  """uint8 RGB (B, H, W, 3) model frames → SAM 3's input (B, 3, size): resized as to_network, normalised with
  mean = std = 0.5 instead of ImageNet's (an exact affine change of to_network's output)."""
  x = to_network(frames, camera, size, device, torch.float32)
  m_in, s_in, m_out, s_out = (torch.tensor(v, device=x.device).view(1, 3, 1, 1)
                              for v in (IMAGENET_MEAN, IMAGENET_STD, SAM3_MEAN, SAM3_STD))
  return ((x * s_in + m_in - m_out) / s_out).to(dtype)


class Sam3Teacher:
  """SAM 3 text-prompted video instance segmentation and tracking (tasks: "video_masks"); a video teacher."""
  name = "sam3"
  tasks = ("video_masks",)
  hf_ids = ("facebook/sam3",)
  hf_revision = "main"

  def __init__(self, model: Sam3VideoModel, tokenizer: CLIPTokenizerFast, weights: WeightsInfo,
               config: Sam3TeacherConfig, device: str, dtype: torch.dtype):
    if not config.prompts:
      raise ValueError("Sam3TeacherConfig.prompts is empty: SAM 3 needs at least one text prompt")
    self.model, self.tokenizer, self.weights, self.config = model, tokenizer, weights, config
    self.device, self.dtype = device, dtype
    size = model.config.detector_config.vision_config.backbone_config.image_size
    self.size = (size, size)

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: Sam3TeacherConfig | None = None) -> Sam3Teacher:
    """The teacher from resolved weights (a Sam3VideoModel save_pretrained folder with its CLIP tokenizer files);
    dtype None: bf16/fp16 on GPU, fp32 on CPU."""
    tokenizer = load_tokenizer(weights, weights.model_id or cls.hf_ids[0])
    dtype = dtype or default_dtype(device)
    model = load_pretrained(Sam3VideoModel, weights, "sam3_video", device, dtype)
    return cls(model, tokenizer, weights, config or Sam3TeacherConfig(), device, dtype)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera, clip=0)

  def _session(self) -> Sam3VideoInferenceSession:
    session = Sam3VideoInferenceSession(inference_device=self.device, inference_state_device=self.device,
                                        video_storage_device=self.device, dtype=self.dtype)
    for text in self.config.prompts:
      prompt_id = session.add_prompt(text)
      enc = self.tokenizer(text, return_tensors="pt", padding="max_length", max_length=TEXT_LENGTH, truncation=True)
      session.prompt_input_ids[prompt_id] = enc.input_ids.to(self.device)
      session.prompt_attention_masks[prompt_id] = enc.attention_mask.to(self.device)
    return session

  @torch.inference_mode()
  def __call__(self, clip: np.ndarray) -> VideoMasks:
    """Every object matching one of the config's text prompts in `clip` (1, T, H, W, 3) uint8 RGB, segmented
    and tracked through its T frames; ids are the model's object ids + 1, labels the prompts that found them."""
    cam = self.config.camera
    frames = check_clip(clip, cam)
    out = ClipMasks(cam, len(frames))
    session = self._session()
    withdrawn: dict[int, int] = {}     # object id -> first frame on which the model reported it removed
    for t in range(len(frames)):
      res = self.model(inference_session=session, frame_idx=t,
                       frame=to_sam3_network(frames[t:t + 1], cam, self.size, self.device, self.dtype)[0])
      # the session's frame count feeds the tracker's memory; the pixels themselves are not needed again
      session.processed_frames[t] = session.processed_frames[t].new_empty(0)
      for obj_id in res.removed_obj_ids:
        withdrawn.setdefault(int(obj_id) + 1, t)
      if not res.obj_id_to_mask:
        continue
      ids = sorted(res.obj_id_to_mask)
      logits = torch.stack([res.obj_id_to_mask[i] for i in ids])               # (K, 1, h, w)
      masks = (to_model_frame(logits, cam)[:, 0] > 0).cpu().numpy()
      for obj_id, mask in zip(ids, masks):
        oid = int(obj_id) + 1
        if oid not in out.masks:
          out.add_object(oid, session.prompts[session.obj_id_to_prompt_id[obj_id]])
        if obj_id in res.suppressed_obj_ids:
          continue
        # the tracker's confidence on tracked frames, the detection score on the frame an object is born
        score = res.obj_id_to_tracker_score.get(obj_id, res.obj_id_to_score.get(obj_id, 0.0))
        out.set(t, oid, mask, float(score))
    delay = self.model.config.hotstart_delay
    for oid, t in withdrawn.items():
      if oid in out.masks:
        if t - delay <= 0:
          out.drop(oid)               # withdrawn within the hotstart window: never a real object
        else:
          out.masks[oid][t - delay:] = False
    return out.result()
