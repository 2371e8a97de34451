"""Unsupervised flow losses: ARFlow's photometric + smoothness terms and UnSAMFlow's segment-guided terms.

- Photometric (ARFlow / UnFlow): 0.15 L1 + 0.85 (1 - SSIM) / 2 between a frame and the other frame warped back
  by the flow, on pixels that the forward-backward check (UnFlow, Meister et al. 2018) finds visible in both
  frames, normalised by the visible fraction; both directions, on the pyramid scales of
  `LossConfig.scale_weights` (images area-resized; by default the full resolution and the next decoded level).
- Blurred photometric (coarse-to-fine variational flow, e.g. Brox et al. 2004): L1 between Gaussian-blurred frames
  at full resolution, one term per `LossConfig.blur_sigmas`. A bilinear warp of a sharp image only has a gradient
  within about a pixel of the right flow; a blurred image keeps one over about sigma pixels, so large motions of
  weakly textured surfaces (generated asphalt and grass) are found, and the sharp terms refine them.
- Smoothness (ARFlow): edge-aware second-order, |d2 flow| weighted by exp(-alpha |dI|), at the finest scale.
- UnSAMFlow (Yuan et al., CVPR 2024), given a segment map (SAM masks; here any integer map, 0 = no segment):
  * homography loss: each segment's flow on its visible pixels is fitted by a homography (DLT least squares,
    refitted on its inliers); where the fit explains most of the segment, the flow of the whole segment,
    occluded pixels included, is pulled towards the (detached) homography flow. Rigid planar surfaces (road,
    car sides, sky at infinity) move by a homography, which fills in what photometry cannot see;
  * boundary-aware smoothness: smoothness is not applied across segment boundaries (motion edges are there).
- Collapse guards. Masked pixels cost nothing photometrically, so a network can hide them all: (1) a sample whose
  forward-backward check marks more than `LossConfig.max_occluded` of its pixels is scored on all its in-frame
  pixels (inconsistent, not occluded); (2) pixels whose flow lands further outside the image than
  `LossConfig.out_margin` of its height are pulled back (L1 on the excess; real driving flow leaves the frame by
  far less). Without (2) two of three GPU runs at lr 1e-3 sent every pixel out of the frame (flows ~100 px at
  256x128, loss 0); without (1) a CPU run with homography weight 0.5 marked every pixel occluded.
All images are (B, 3, H, W) floats in [0, 1]; flows (B, 2, H, W) in pixels as tools.fair.flow.model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tools.fair.flow.model import fb_occlusion, leaves_image, pixel_grid, warp



@dataclass(frozen=True)
class LossConfig:
  """Loss weights (ARFlow's KITTI settings, UnSAMFlow's segment terms)."""
  w_l1: float = 0.15
  w_ssim: float = 0.85
  # photometric weight per pyramid flow, finest first (flows beyond the tuple get 0). Only the full-resolution flow
  # and the next decoded level: on generated driving pairs at 256x128 the 1/16 and 1/32 images (16x8, 8x4) rank
  # zero flow above the true flow (forward driving moves the texture, not the coarse layout of road and horizon).
  # ARFlow's (1, 1, 1, 1, 0) also never zeroed anything here: the default net gives 4 flows, not 5.
  scale_weights: tuple[float, ...] = (1.0, 1.0, 0.0, 0.0, 0.0)
  # second-order smoothness. ARFlow's 2.5 (50 on flow / 20) makes the true flow of a generated pair cost 0.05-0.2
  # against a photometric gain over zero flow of 0.01-0.05: the loss then prefers no motion at all. 10 CPU minutes
  # at 128x64 (docs/benchmarks/flow.md): 0.1 ends at EPE 1.46 px, 0.5 at 2.07 (zero flow 2.90)
  w_smooth: float = 0.1
  # blurred L1 terms, each weighted by its sigma (a blurred image's gradients shrink about as 1 / sigma), in pixels
  # of the training frame. Optimising a flow field directly (no network) on 8 held-out generated pairs at 256x128
  # from zero for 300 Adam steps: the loss without them ends at EPE 5.44 px (zero flow 5.82); with sigmas 1, 2, 4, 8
  # at 3.94 px. But a wide blur mixes near road with the horizon and prefers a short flow: along flow = a * exact
  # flow of the 80 held-out 128x64 pairs (bench/flow_loss_scan.py) the sigma-8 term is lowest at a = 0.35, sigma 4 at
  # 0.75, sigma 2 at 0.85, sigma 1 at 0.95 (the sharp terms at 0.95). 1950 steps at 128x64 (docs/benchmarks/
  # flow.md): sigmas 1, 2, 4, 8 end at EPE 1.39 px, ego-motion 60 % off; 1, 2 at 1.10 px, 43 %; sigma 1 alone never
  # leaves zero flow (scale the sigmas with the frame: 2, 4 at 256x128)
  blur_sigmas: tuple[float, ...] = (1.0, 2.0)
  w_blur: float = 1.0
  edge_alpha: float = 150.0      # edge-awareness exp(-alpha |dI|) (ARFlow's edge_constant)
  w_homography: float = 0.1      # UnSAMFlow segment homography term (only with segments)
  w_out: float = 1.0             # out-of-frame guard weight (per pixel of excess) ...
  out_margin: float = 0.25       # ... beyond this fraction of the image height outside the frame
  # a flow whose forward-backward check marks more of its pixels occluded is scored on all in-frame pixels: the
  # other way to hide every pixel (a 10-minute CPU run with homography weight 0.5 collapsed to EPE 22.7 px, all
  # pixels occluded, photometric loss 0). Healthy runs show 10-40 % occluded
  max_occluded: float = 0.5
  min_segment: int = 16          # segments with fewer visible fit pixels are not fitted
  fit_stride: int = 2            # homography fits use every fit_stride-th pixel in x and y
  inlier_px: float = 0.5         # homography inlier residual (pixels of the finest scale)
  min_inliers: float = 0.6       # the fit is used when this fraction of the segment's visible pixels are inliers


@dataclass(frozen=True)
class LossTerms:
  total: torch.Tensor
  photometric: float
  smooth: float
  homography: float
  occluded: float   # occluded fraction of the finest forward flow


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
  """Per-pixel SSIM (B, C, H, W) over 3x3 windows (reflect-padded), constants of Wang et al. for [0, 1] images."""
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  x, y = F.pad(x, (1,) * 4, mode="reflect"), F.pad(y, (1,) * 4, mode="reflect")
  mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
  sxx = F.avg_pool2d(x * x, 3, 1) - mu_x ** 2
  syy = F.avg_pool2d(y * y, 3, 1) - mu_y ** 2
  sxy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
  return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def photometric_loss(img: torch.Tensor, recon: torch.Tensor, visible: torch.Tensor, w_l1: float = 0.15,
                     w_ssim: float = 0.85) -> torch.Tensor:
  """ARFlow's photometric loss of `img` against its reconstruction on `visible` (B, 1, H, W) pixels:
  mean(w_l1 |img - recon| + w_ssim (1 - SSIM) / 2 over visible pixels) / visible fraction."""
  m = visible.to(img.dtype)
  l1 = ((img - recon).abs() * m).mean()
  dssim = ((1 - ssim(recon * m, img * m)) / 2).clamp(0, 1).mean()
  return (w_l1 * l1 + w_ssim * dssim) / m.mean().clamp_min(1e-6)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
  """Separable Gaussian blur of (B, C, H, W) with edge replication, kernel radius ceil(3 sigma)."""
  r = max(1, int(math.ceil(3 * sigma)))
  k = torch.exp(-torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
  k = k / k.sum()
  c = x.shape[1]
  x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
  return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blurred_photometric_loss(imgs: torch.Tensor, others: torch.Tensor, flow: torch.Tensor, visible: torch.Tensor,
                             sigmas: tuple[float, ...]) -> torch.Tensor:
  """sum over sigmas of sigma * mean |G_sigma * imgs - warp(G_sigma * others, flow)| on `visible` pixels, / visible
  fraction: the wide-basin photometric terms."""
  m = visible.to(imgs.dtype)
  out = imgs.new_zeros(())
  for sigma in sigmas:
    a, b = gaussian_blur(imgs, sigma), gaussian_blur(others, sigma)
    out = out + sigma * ((a - warp(b, flow)).abs() * m).mean()
  return out / m.mean().clamp_min(1e-6)


def _grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def smoothness_loss(flow: torch.Tensor, img: torch.Tensor, alpha: float = 150.0,
                    segments: torch.Tensor | None = None) -> torch.Tensor:
  """Edge-aware second-order smoothness (ARFlow): mean |d2 flow / dx2| exp(-alpha mean_c |dI/dx|) (and y), / 2.
  With a segment map (B, H, W), second derivatives spanning a segment boundary are not penalised."""
  img_dx, img_dy = _grad(img)
  # the weight of a second derivative centred on pixel p: the smaller of the image-gradient weights on both sides
  # of p (ARFlow takes only one side, so an edge just left of a motion edge would not switch it off)
  wx = torch.exp(-alpha * img_dx.abs().mean(1, keepdim=True))
  wy = torch.exp(-alpha * img_dy.abs().mean(1, keepdim=True))
  wx = torch.minimum(wx[..., :, 1:], wx[..., :, :-1])
  wy = torch.minimum(wy[..., 1:, :], wy[..., :-1, :])
  if segments is not None:
    s = segments[:, None]
    same_x, same_y = s[..., :, 1:] == s[..., :, :-1], s[..., 1:, :] == s[..., :-1, :]
    wx = wx * (same_x[..., :, 1:] & same_x[..., :, :-1])
    wy = wy * (same_y[..., 1:, :] & same_y[..., :-1, :])
  dx, dy = _grad(flow)
  dx2, _ = _grad(dx)
  _, dy2 = _grad(dy)
  return (wx * dx2.abs()).mean() / 2 + (wy * dy2.abs()).mean() / 2


def _normaliser(p: torch.Tensor, index: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
  """Per-group Hartley normalisation (n, 3, 3): weighted centroid to 0, mean distance to sqrt(2)."""
  cnt = torch.zeros(n, dtype=p.dtype, device=p.device).index_add_(0, index, w).clamp_min(1e-12)
  mu = torch.zeros(n, 2, dtype=p.dtype, device=p.device).index_add_(0, index, p * w[:, None]) / cnt[:, None]
  dist = torch.zeros(n, dtype=p.dtype, device=p.device).index_add_(0, index, (p - mu[index]).norm(dim=1) * w)
  s = (2 ** 0.5) / (dist / cnt).clamp_min(1e-9)
  t = torch.zeros(n, 3, 3, dtype=p.dtype, device=p.device)
  t[:, 0, 0], t[:, 1, 1], t[:, 2, 2] = s, s, 1.0
  t[:, :2, 2] = -s[:, None] * mu
  return t


def fit_homographies(src: torch.Tensor, dst: torch.Tensor, index: torch.Tensor, n: int,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
  """Least-squares homographies (n, 3, 3), H[2, 2] = 1, with dst ~ H src for the (N, 2) points of each group
  (`index` (N,) in 0..n-1, optional 0/1 `weight`): DLT normal equations on Hartley-normalised coordinates in
  float64, all groups at once. A group needs >= 4 points in general position (others get a meaningless H)."""
  src, dst = src.double(), dst.double()
  w = torch.ones(len(src), dtype=src.dtype, device=src.device) if weight is None else weight.double()
  ts, td = _normaliser(src, index, w, n), _normaliser(dst, index, w, n)
  a = src * ts[index, 0, 0, None] + ts[index, :2, 2]
  b = dst * td[index, 0, 0, None] + td[index, :2, 2]
  x, y, u, v = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
  one, zero = torch.ones_like(x), torch.zeros_like(x)
  r1 = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], 1)
  r2 = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], 1)
  ata = torch.zeros(n, 8, 8, dtype=src.dtype, device=src.device).index_add_(
    0, index, w[:, None, None] * (r1[:, :, None] * r1[:, None] + r2[:, :, None] * r2[:, None]))
  atb = torch.zeros(n, 8, dtype=src.dtype, device=src.device).index_add_(0, index, w[:, None] * (r1 * u[:, None] +
                                                                                                   r2 * v[:, None]))
  ata = ata + 1e-9 * torch.eye(8, dtype=src.dtype, device=src.device)   # keeps empty groups solvable
  h = torch.linalg.solve(ata, atb)
  hn = torch.cat([h, h.new_ones(n, 1)], 1).view(n, 3, 3)
  full = torch.linalg.solve(td, hn @ ts)
  return full / full[:, 2:3, 2:3]


def fit_homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
  """The least-squares homography (3, 3) with dst ~ H src for (N >= 4, 2) points."""
  return fit_homographies(src, dst, torch.zeros(len(src), dtype=torch.long, device=src.device), 1)[0]


def apply_homography(h: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
  """(N, 2) points mapped by homography h (3, 3), or by per-point homographies h (N, 3, 3)."""
  p = pts.double()
  q = (p @ h[:, :2].T + h[:, 2]) if h.ndim == 2 else (h[:, :, :2] @ p[:, :, None])[..., 0] + h[:, :, 2]
  return (q[:, :2] / q[:, 2:3]).to(pts.dtype)


def homography_loss(flow: torch.Tensor, segments: torch.Tensor, occluded: torch.Tensor,
                    config: LossConfig = LossConfig()) -> torch.Tensor:
  """UnSAMFlow's segment homography term: mean over accepted segments of mean |flow - flow_H|_1 over all the
  segment's pixels, flow_H from a homography fitted (no gradient) to the visible pixels' flow, refitted on those
  within `inlier_px`; a segment is accepted when it has >= `min_segment` visible fit pixels (every `fit_stride`-th
  in x and y) and its inliers are >= `min_inliers` of them. segments (B, H, W) int (0 = none; keep ids small,
  e.g. 1..K per image: every id up to the largest is solved for), occluded (B, 1, H, W) bool. Zero when no
  segment is accepted."""
  b, _, h, w = flow.shape
  grid = pixel_grid(h, w, flow.device, flow.dtype)[0].flatten(1).T.repeat(b, 1)   # (BHW, 2)
  f = flow.permute(0, 2, 3, 1).reshape(-1, 2)
  seg = segments.reshape(b, -1).long()
  keep = (seg > 0).flatten()
  if not keep.any():
    return flow.new_zeros(())
  # one group per (image, id): ids should be small (e.g. consecutive) since empty groups are still solved
  k = int(seg.max()) + 1
  index = (seg + torch.arange(b, device=seg.device)[:, None] * k).flatten()[keep]
  n = b * k
  with torch.no_grad():
    # the fit uses every `fit_stride`-th pixel each way: a homography needs few points, the normal equations cost
    src = grid[keep]
    dst = src + f[keep].detach()
    g = src.long()
    sel = (g[:, 0] % config.fit_stride == 0) & (g[:, 1] % config.fit_stride == 0)
    sel &= (~occluded).flatten()[keep]
    fs, fd, fi = src[sel], dst[sel], index[sel]
    n_vis = torch.bincount(fi, minlength=n).double()
    hs = fit_homographies(fs, fd, fi, n)
    inl = (apply_homography(hs[fi], fs) - fd).norm(dim=1) < config.inlier_px
    n_inl = torch.bincount(fi[inl], minlength=n).double()
    ok = (n_vis >= config.min_segment) & (n_inl >= torch.clamp(config.min_inliers * n_vis, min=config.min_segment))
    if not ok.any():
      return flow.new_zeros(())
    hs = fit_homographies(fs[inl], fd[inl], fi[inl], n)
    target = apply_homography(hs[index], src) - src
  px = ok[index]
  err = (f[keep][px] - target[px]).abs().sum(1)
  sums = torch.zeros(n, dtype=err.dtype, device=err.device).index_add_(0, index[px], err)
  counts = torch.zeros(n, dtype=err.dtype, device=err.device).index_add_(0, index[px], torch.ones_like(err))
  return (sums[ok] / counts[ok]).mean()


def out_of_frame_excess(flow: torch.Tensor, margin: float) -> torch.Tensor:
  """Mean over pixels of how far (pixels) p + flow(p) lies outside the image rectangle grown by `margin` pixels."""
  _, _, h, w = flow.shape
  pos = pixel_grid(h, w, flow.device, flow.dtype) + flow
  lo = torch.tensor([-margin - 0.5, -margin - 0.5], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
  hi = torch.tensor([w - 0.5 + margin, h - 0.5 + margin], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
  return (F.relu(lo - pos) + F.relu(pos - hi)).sum(1).mean()


def _visible(flow: torch.Tensor, b: int, occlusion_aware: bool, max_occluded: float = 1.0) -> torch.Tensor:
  """Pixels the photometric loss sees: not occluded by the forward-backward check (occlusion_aware) and not leaving
  the image. A flow whose check marks more than `max_occluded` of its pixels is inconsistent rather than occluded:
  it is scored on every pixel that stays in the image, so that hiding pixels is not rewarded."""
  out = leaves_image(flow)
  if occlusion_aware:
    occ = fb_occlusion(flow, torch.cat([flow[b:], flow[:b]]))
    use = occ.flatten(1).float().mean(1) <= max_occluded
    out = torch.where(use.view(-1, 1, 1, 1), occ, out)
  return ~out


def unsupervised_loss(flows: list[torch.Tensor], img1: torch.Tensor, img2: torch.Tensor,
                      segments: torch.Tensor | None = None, config: LossConfig = LossConfig(),
                      occlusion_aware: bool = True) -> LossTerms:
  """The training loss of a bidirectional flow pyramid (FlowNet(img1, img2, backward=True)): flows finest first,
  each (2B, 2, h, w), forward in [:B], backward in [B:]. segments: (2B, H, W) segment maps of img1 then img2
  (enables the UnSAMFlow terms), or None. occlusion_aware=False masks only pixels that leave the image: the
  forward-backward check of an untrained network marks nearly everything occluded (UnFlow and ARFlow also start
  without it)."""
  b = img1.shape[0]
  imgs = torch.cat([img1, img2])
  others = torch.cat([img2, img1])
  photo = imgs.new_zeros(())
  full = flows[0]
  occ0 = ~_visible(full, b, occlusion_aware, config.max_occluded)
  for k, (flow, w) in enumerate(zip(flows, config.scale_weights)):
    if w == 0:
      continue
    size = flow.shape[-2:]
    im, ot = ((x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="area")) for x in (imgs, others))
    occ = occ0 if k == 0 else ~_visible(flow, b, occlusion_aware, config.max_occluded)
    photo = photo + w * photometric_loss(im, warp(ot, flow), ~occ, config.w_l1, config.w_ssim)
  if config.w_blur > 0 and config.blur_sigmas:
    photo = photo + config.w_blur * blurred_photometric_loss(imgs, others, full, ~occ0, config.blur_sigmas)
  smooth = smoothness_loss(full, imgs, config.edge_alpha, segments)
  hom = (homography_loss(full, segments, occ0, config) if segments is not None and config.w_homography > 0
         else full.new_zeros(()))
  total = photo + config.w_smooth * smooth + config.w_homography * hom
  if config.w_out > 0:
    total = total + config.w_out * out_of_frame_excess(full, config.out_margin * full.shape[-2])
  return LossTerms(total, photo.item(), smooth.item(), hom.item(), occ0[:b].float().mean().item())

