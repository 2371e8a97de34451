"""Ego-motion metrics: relative pose errors (KITTI odometry-like) and trajectory ATE."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.fair.bench.metrics._common import mean_or_nan, same_shape


@dataclass(frozen=True)
class PoseErrors:
  trans_m: float            # mean ||t_pred - t_gt|| (metres)
  trans_rel_pct: float      # mean 100 ||t_pred - t_gt|| / ||t_gt|| over pairs with ||t_gt|| > 0 (%)
  rot_deg: float            # mean geodesic angle between R_pred and R_gt (degrees)
  per_pair: np.ndarray      # (N, 3): trans_m, trans_rel_pct (NaN for a static gt), rot_deg of each pair


def _rt(pose, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(R (N, 3, 3), t (N, 3)) from (..., 4, 4) homogeneous poses or an (R, t) tuple."""
  if isinstance(pose, tuple):
    R, t = (np.asarray(x, np.float64) for x in pose)
  else:
    pose = np.asarray(pose, np.float64)
    if pose.shape[-2:] != (4, 4):
      raise ValueError(f"{name} must be (..., 4, 4) poses or an (R, t) tuple, got shape {pose.shape}")
    R, t = pose[..., :3, :3], pose[..., :3, 3]
  if R.shape[-2:] != (3, 3) or R.shape[:-2] != t.shape[:-1] or t.shape[-1:] != (3,):
    raise ValueError(f"{name}: R shape {R.shape} and t shape {t.shape} do not make (..., 3, 3) and (..., 3)")
  return R.reshape(-1, 3, 3), t.reshape(-1, 3)


def rotation_angle_deg(R) -> np.ndarray:
  """Rotation angle (degrees, in [0, 180]) of rotation matrices (..., 3, 3): atan2(|axis * sin|, cos),
  accurate near 0 unlike acos((trace - 1) / 2)."""
  R = np.asarray(R, np.float64)
  cos = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
  skew = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
  return np.degrees(np.arctan2(np.linalg.norm(skew, axis=-1) / 2, cos))


def relative_pose_errors(pred, gt) -> PoseErrors:
  """Errors of predicted relative poses (frame-to-frame motions) against gt, per pair and averaged.

  `pred` and `gt` are N relative poses each, as (N, 4, 4) (or (4, 4)) homogeneous matrices or (R, t)
  tuples, translation in metres. As in the KITTI odometry devkit the error pose is E = pred^-1 gt;
  its translation norm ||R_pred^T (t_gt - t_pred)|| = ||t_gt - t_pred|| is the translation error
  (metres, and in % of the gt translation length) and its rotation angle is the rotation error
  (geodesic distance between R_pred and R_gt, degrees; symmetric in pred and gt).
  """
  (Rp, tp), (Rg, tg) = _rt(pred, "pred"), _rt(gt, "gt")
  same_shape(tp, tg)
  trans = np.linalg.norm(tg - tp, axis=-1)
  gt_len = np.linalg.norm(tg, axis=-1)
  rel = np.divide(100 * trans, gt_len, out=np.full_like(trans, np.nan), where=gt_len > 0)
  rot = rotation_angle_deg(np.swapaxes(Rp, -1, -2) @ Rg)
  return PoseErrors(trans_m=mean_or_nan(trans), trans_rel_pct=mean_or_nan(rel[np.isfinite(rel)]),
                    rot_deg=mean_or_nan(rot), per_pair=np.stack([trans, rel, rot], axis=-1))


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
  """Similarity (s, R, t) minimising sum ||s R src_i + t - dst_i||^2 (Umeyama 1991)."""
  mu_s, mu_d = src.mean(0), dst.mean(0)
  a, b = src - mu_s, dst - mu_d
  U, D, Vt = np.linalg.svd(b.T @ a / len(src))
  S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0])
  R = U @ S @ Vt
  s = np.trace(np.diag(D) @ S) / np.mean(np.sum(a ** 2, axis=1))
  return s, R, mu_d - s * R @ mu_s


def ate_rmse(pred, gt, align: str | None = None) -> float:
  """Absolute trajectory error sqrt(mean_i ||p_i - g_i||^2) (metres) of (N, 3) positions, after alignment:

    align=None:    none (both trajectories already in the same frame and scale);
    align="scale": as SfMLearner / monodepth2 `compute_ate`: pred is shifted so that its first point
                   is gt's, then scaled by the least-squares s = sum(g . p) / sum(p . p);
    align="sim3":  the least-squares similarity transform (Umeyama), the TUM RGB-D convention for
                   monocular trajectories.
  """
  if align not in (None, "scale", "sim3"):
    raise ValueError(f"align must be None, 'scale' or 'sim3', got {align!r}")
  pred, gt = same_shape(np.asarray(pred, np.float64), np.asarray(gt, np.float64))
  if gt.ndim != 2 or gt.shape[1] != 3 or not len(gt):
    raise ValueError(f"trajectories must be non-empty (N, 3), got shape {gt.shape}")
  if align == "scale":
    pred = pred - pred[0] + gt[0]
    pred = pred * (np.sum(gt * pred) / np.sum(pred * pred))
  elif align == "sim3":
    s, R, t = _umeyama(pred, gt)
    pred = s * pred @ R.T + t
  return float(np.sqrt(np.mean(np.sum((pred - gt) ** 2, axis=1))))
