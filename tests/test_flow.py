"""UnSAMFlow-style flow (tools/fair/flow): losses with known answers, the cost volume against a loop, ego-motion and
object velocities from exact flow + depth, FlowTeacher weights through the real DIR/flow/ path, exact resume."""
import argparse
import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tools.fair.bench.metrics.egomotion import relative_pose_errors  # noqa: E402
from tools.fair.flow.losses import (LossConfig, apply_homography, fit_homography, homography_loss,  # noqa: E402
                                    blurred_photometric_loss, gaussian_blur, out_of_frame_excess, photometric_loss,
                                    smoothness_loss, ssim, unsupervised_loss)
from tools.fair.flow.model import (FlowNet, FlowNetConfig, correlation, fb_occlusion, normalize_features,  # noqa: E402
                                   photometric_residual, warp)
from tools.fair.flow.motion import ego_motion, object_velocities, scene_relative_pose  # noqa: E402
from tools.fair.flow.train import (TrainConfig, add_arguments, evaluate, gt_segments, load_pairs,  # noqa: E402
                                   load_pairs_npz, run, save_pairs, train_flow)
from tools.fair.sim import SCENARIOS, make_scene  # noqa: E402
from tools.fair.sim.cli import write_segment  # noqa: E402
from tools.fair.sim.gt import gt_camera, scene_gt  # noqa: E402
from tools.fair.teachers.base import FlowMaps  # noqa: E402
from tools.fair.teachers.flow import FlowTeacher  # noqa: E402
from tools.fair.teachers.weights import MissingWeightsError  # noqa: E402

TINY = FlowNetConfig(channels=(8, 8, 12), output_level=2, radius=2, reduce=8, estimator=(16, 8), context=(8, 8),
                     dilations=(1, 2))


def _smooth_image(h=32, w=48, seed=0) -> torch.Tensor:
  g = torch.Generator().manual_seed(seed)
  x = torch.rand(1, 3, h // 4, w // 4, generator=g)
  return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


# ---- losses with known answers

def test_correlation_matches_a_naive_loop():
  g = torch.Generator().manual_seed(1)
  f1, f2 = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
  r = 2
  out = correlation(f1, f2, r)
  assert out.shape == (2, 25, 6, 7)
  ref = torch.zeros_like(out)
  for dy in range(-r, r + 1):
    for dx in range(-r, r + 1):
      for y in range(6):
        for x in range(7):
          if 0 <= y + dy < 6 and 0 <= x + dx < 7:
            ref[:, (dy + r) * 5 + dx + r, y, x] = (f1[:, :, y, x] * f2[:, :, y + dy, x + dx]).mean(1)
  torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_photometric_loss_is_zero_for_the_exact_flow_and_larger_for_a_wrong_one():
  img2 = _smooth_image()
  yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
  flow = torch.stack([1.5 + 0.05 * yy, 0.7 - 0.02 * xx])[None]   # a smooth sub-pixel field
  img1 = warp(img2, flow)    # the first frame's pixel p is the second frame's p + flow(p)
  visible = ~fb_occlusion(flow, -flow)   # away from the border p + flow stays inside
  assert visible.float().mean() > 0.8
  exact = photometric_loss(img1, warp(img2, flow), visible)
  wrong = photometric_loss(img1, warp(img2, flow + torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)), visible)
  assert exact.item() < 1e-6 and wrong.item() > 0.01


def _rendered_pair(seed: int, scenario: str, size: tuple[int, int]):
  """Frames 1 and 2 of a noise-free generated scene in the model frame: images (1, 3, H, W) in [0, 1], the exact
  flow (1, 2, H, W) and its visibility (1, 1, H, W)."""
  scene = make_scene(seed, 0.2, "mici", dataclasses.replace(SCENARIOS[scenario], noise=0.0))
  cam, rpy = gt_camera(scene, "model", size)
  g0, g1 = scene_gt(scene, 1, cam, rpy, "model"), scene_gt(scene, 2, cam, rpy, "model")
  img1, img2 = (torch.from_numpy(g.rgb).permute(2, 0, 1)[None].float() / 255 for g in (g0, g1))
  flow = torch.from_numpy(g0.flow).permute(2, 0, 1)[None].float()
  return img1, img2, flow, torch.from_numpy(g0.flow_valid)[None, None]


def test_photometric_loss_prefers_the_generators_flow_on_a_rendered_pair():
  img1, img2, flow, visible = _rendered_pair(5, "highway", (128, 64))
  moving = visible & (flow.norm(dim=1, keepdim=True) > 1)
  assert moving.float().mean() > 0.2
  exact, zero, reversed_ = (photometric_loss(img1, warp(img2, f), moving).item() for f in (flow, 0 * flow, -flow))
  # the renderer's texture aliasing leaves a residual even for the exact flow; the order is what matters
  assert exact < 0.9 * zero < 0.9 * reversed_, (exact, zero, reversed_)


def _flow_pyramid(flow: torch.Tensor, sizes) -> list[torch.Tensor]:
  """A flow (B, 2, H, W) as the pyramid FlowNet returns: itself, then area-resized to each (h, w) in its pixels."""
  h, w = flow.shape[-2:]
  return [flow] + [F.interpolate(flow, size=s, mode="area") * torch.tensor([s[1] / w, s[0] / h]).view(1, 2, 1, 1)
                   for s in sizes]


def test_default_training_loss_ranks_the_generators_flow_below_zero_flow():
  """The root cause of a network that predicted almost no motion: with ARFlow's smoothness weight 2.5 and the
  8x4 / 16x8 levels supervised, the full training loss of a generated 256x128 driving pair was lower for zero flow
  than for the generator's exact flow. The defaults must rank the exact flow first."""
  img1, img2, exact, _ = _rendered_pair(5, "highway", (256, 128))
  assert exact.norm(dim=1).mean() > 2
  sizes = [(16, 32), (8, 16), (4, 8)]    # the default net's decoded levels 3..5 at 256x128
  shapes = [tuple(f.shape) for f in FlowNet(FlowNetConfig(output_level=2))(img1, img2, backward=True)]
  assert shapes == [(2, 2, 128, 256)] + [(2, 2) + s for s in sizes]

  def total(flow, config):   # forward flow as given, backward flow zero in both cases
    flows = [torch.cat([f, torch.zeros_like(f)]) for f in _flow_pyramid(flow, sizes)]
    return unsupervised_loss(flows, img1, img2, config=config, occlusion_aware=False).total.item()

  new = LossConfig()
  assert total(exact, new) < total(0 * exact, new) - 0.003   # half of it is the (equal) backward term
  old = LossConfig(w_smooth=2.5, scale_weights=(1.0, 1.0, 1.0, 1.0, 0.0))
  assert total(exact, old) > total(0 * exact, old)


def test_gaussian_blur_keeps_constants_and_the_mean_and_matches_a_dense_kernel():
  x = torch.rand(1, 2, 20, 24, generator=torch.Generator().manual_seed(3))
  torch.testing.assert_close(gaussian_blur(torch.full((1, 1, 9, 9), 0.3), 2.0), torch.full((1, 1, 9, 9), 0.3))
  y = gaussian_blur(x, 1.5)
  assert y.std() < 0.6 * x.std()
  r = 5
  k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * 1.5 ** 2))
  k2 = (k[:, None] * k[None]) / k.sum() ** 2
  ref = F.conv2d(F.pad(x, (r,) * 4, mode="replicate").view(2, 1, 30, 34), k2[None, None]).view(1, 2, 20, 24)
  torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)


def test_blurred_photometric_loss_sees_a_shift_that_the_sharp_loss_cannot():
  """The wide basin: a fine texture shifted by 6 px. At zero flow the sharp loss's gradient does not point to the
  shift (its texture decorrelates within a pixel or two); the blurred terms' gradient does, and they are ~0 at it."""
  g = torch.Generator().manual_seed(0)
  big = F.interpolate(torch.rand(1, 3, 32, 51, generator=g), size=(64, 102), mode="bilinear", align_corners=False)
  img1, img2 = big[..., 6:], big[..., :-6]     # img1 at p is img2 at p + (6, 0)
  shift = torch.tensor([6.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 64, 96)
  visible = torch.zeros(1, 1, 64, 96, dtype=torch.bool)
  visible[..., 16:-16, 16:-24] = True          # away from the borders the blur replicates
  sigmas = (2.0, 4.0)

  def direction(loss_of_flow):   # mean sign of -d loss / d u over the visible pixels (+1: all towards +6)
    flow = torch.zeros(1, 2, 64, 96, requires_grad=True)
    loss_of_flow(flow).backward()
    gu = flow.grad[:, 0][visible[:, 0]]
    return (-gu.mean() / gu.abs().mean()).item()

  blur_dir = direction(lambda f: blurred_photometric_loss(img1, img2, f, visible, sigmas))
  sharp_dir = direction(lambda f: photometric_loss(img1, warp(img2, f), visible))
  assert blur_dir > 0.5 and abs(sharp_dir) < 0.3, (blur_dir, sharp_dir)
  at_shift = blurred_photometric_loss(img1, img2, shift, visible, sigmas).item()
  at_zero = blurred_photometric_loss(img1, img2, 0 * shift, visible, sigmas).item()
  assert at_shift < 0.05 * at_zero, (at_shift, at_zero)


@pytest.mark.parametrize("seed,scenario", [(5, "highway"), (6, "city")])
def test_wide_blur_prefers_a_short_flow_and_the_default_sigmas_do_not(seed, scenario):
  """Why LossConfig.blur_sigmas stops at 2: over flow = a * exact flow of a generated 128x64 pair the sharp
  photometric loss is lowest near a = 1, and so are the default blurred terms; a sigma-8 blur (of a 64-pixel-high
  frame, mixing near road with the horizon) is lowest at a much shorter flow and would pull the network short."""
  img1, img2, exact, visible = _rendered_pair(seed, scenario, (128, 64))
  scales = np.linspace(0, 1.3, 27)

  def best(loss_of_flow):
    return scales[np.argmin([loss_of_flow(a * exact).item() for a in scales])]

  assert 0.85 <= best(lambda f: photometric_loss(img1, warp(img2, f), visible)) <= 1.05
  assert 0.8 <= best(lambda f: blurred_photometric_loss(img1, img2, f, visible, LossConfig.blur_sigmas)) <= 1.05
  assert best(lambda f: blurred_photometric_loss(img1, img2, f, visible, (8.0,))) <= 0.7


def test_photometric_residual_is_small_for_the_right_flow_and_large_where_it_leaves_the_frame():
  big = _smooth_image(32, 56, seed=4)
  img1, img2 = big[..., 4:52], big[..., :48]       # img1 at p is img2 at p + (4, 0)
  right = torch.tensor([4.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 32, 48)
  res = photometric_residual(img1, img2, right)
  assert res.shape == (1, 32, 48)
  assert res[..., :44].max() < 1e-5                 # where p + flow stays in the frame
  torch.testing.assert_close(res[..., 45:], img1.mean(1)[..., 45:])   # outside: compared with zeros
  assert photometric_residual(img1, img2, 0 * right)[..., :44].mean() > 20 * res[..., :44].mean() + 0.01


def test_out_of_frame_guard_is_zero_within_the_margin_and_pulls_escaping_flow_back():
  h, w = 10, 20
  inside = torch.zeros(1, 2, h, w)
  inside[:, 1] = 3.0                     # everything moves 3 px down: at most 3 px outside, margin 4
  assert out_of_frame_excess(inside, 4.0).item() == 0
  away = torch.zeros(1, 2, h, w)
  away[:, 0] = 100.0                     # x + 100 against the right edge w - 0.5 + 4
  expected = torch.relu(torch.arange(w) + 100.0 - (w - 0.5 + 4)).mean()
  torch.testing.assert_close(out_of_frame_excess(away, 4.0), expected)
  # in the training loss the guard is what a collapsed flow (everything out of the frame, photometric 0) pays
  img = _smooth_image(64, 64)
  flows = [torch.cat([away.new_full((1, 2, 64, 64), 100.0), away.new_full((1, 2, 64, 64), -100.0)])]
  cfg = LossConfig(scale_weights=(1.0,))
  terms = unsupervised_loss(flows, img, img, config=cfg, occlusion_aware=False)
  assert terms.photometric == 0 and terms.total.item() > 50
  assert unsupervised_loss(flows, img, img, config=dataclasses.replace(cfg, w_out=0.0),
                           occlusion_aware=False).total.item() < 1e-3


def test_a_flow_inconsistent_everywhere_is_scored_on_all_in_frame_pixels():
  """The other collapse: forward and backward flows that never cancel mark every pixel occluded, which would make
  the photometric loss 0; above max_occluded the sample is scored on its in-frame pixels instead."""
  img1, img2 = _smooth_image(64, 64, seed=1), _smooth_image(64, 64, seed=2)
  fw = torch.full((1, 2, 64, 64), 3.0)
  flows = [torch.cat([fw, fw])]          # backward = forward: |fw + bw| = 8.5 px everywhere, all "occluded"
  assert fb_occlusion(fw, fw).all()
  cfg = LossConfig(scale_weights=(1.0,), blur_sigmas=())
  guarded = unsupervised_loss(flows, img1, img2, config=cfg)
  assert guarded.photometric > 0.05 and guarded.occluded < 0.2   # only the pixels leaving the frame
  unguarded = unsupervised_loss(flows, img1, img2, config=dataclasses.replace(cfg, max_occluded=1.0))
  assert unguarded.photometric == 0 and unguarded.occluded == 1.0
  # a partly occluded flow keeps its forward-backward mask
  bw = -fw.clone()
  bw[..., :16, :] = 3.0                 # the top quarter inconsistent
  part = unsupervised_loss([torch.cat([fw, bw])], img1, img2, config=cfg)
  assert 0.2 < part.occluded < 0.5


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_ssim_of_identical_images_is_one(seed):
  x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(seed))
  torch.testing.assert_close(ssim(x, x), torch.ones_like(x), atol=1e-5, rtol=0)
  assert ssim(x, 1 - x).mean() < 0.9


def test_smoothness_is_zero_for_constant_and_affine_flow_and_positive_for_a_kink():
  img = torch.full((1, 3, 32, 48), 0.5)   # no image edges: full weight everywhere
  yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
  assert smoothness_loss(torch.full((1, 2, 32, 48), 3.0), img).item() == 0
  affine = torch.stack([0.1 * xx + 0.2 * yy, -0.3 * xx])[None]
  assert smoothness_loss(affine, img).item() < 1e-5
  kink = torch.stack([(xx - 24).abs(), torch.zeros_like(xx)])[None]
  # |d2| = 2 on one of 46 columns of one of the 2 channels, x term halved
  assert smoothness_loss(kink, img).item() == pytest.approx(2 / 46 / 2 / 2, rel=1e-5)
  edge = img.clone()
  edge[..., 24:] = 1.0                 # an image edge at the kink: edge-aware weights switch it off
  assert smoothness_loss(kink, edge).item() < 1e-15
  # the kink lies on a segment boundary: with segments it is not penalised (UnSAMFlow's boundary-aware term)
  segs = (xx >= 24).long()[None] + 1
  assert smoothness_loss(kink, img, segments=segs).item() == 0


def test_forward_backward_check_finds_the_occluded_block_and_the_right_border():
  h, w = 20, 30
  fw = torch.zeros(1, 2, h, w)
  fw[:, 0] = 2.0
  bw = -fw.clone()
  bw[:, :, 5:10, 12:18] = 3.0          # the second frame's block does not map back: the pixels landing there are hidden
  occ = fb_occlusion(fw, bw)[0, 0]
  expect = torch.zeros(h, w, dtype=torch.bool)
  expect[5:10, 10:16] = True           # x + 2 in 12..17
  expect[:, w - 2:] = True             # x + 2 > w - 0.5 leaves the image
  assert torch.equal(occ, expect)


def test_homography_fit_and_loss():
  h = torch.tensor([[1.02, 0.01, 3.0], [0.005, 0.98, -2.0], [1e-4, -2e-4, 1.0]], dtype=torch.float64)
  pts = torch.rand(60, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
  torch.testing.assert_close(fit_homography(pts, apply_homography(h, pts)), h, atol=1e-8, rtol=1e-8)
  yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
  grid = torch.stack([xx, yy], -1).reshape(-1, 2).double()
  flow = (apply_homography(h, grid) - grid).float().T.reshape(1, 2, 24, 32).contiguous()
  segs = torch.ones(1, 24, 32, dtype=torch.long)
  occ = torch.zeros(1, 1, 24, 32, dtype=torch.bool)
  assert homography_loss(flow, segs, occ).item() < 1e-4   # already a homography: nothing to pull
  bad = flow.clone()
  bad[:, :, 2:5, 2:5] += 4.0                              # a few outliers: refitted without them, pulled back
  occ_bad = occ.clone()
  occ_bad[:, :, 2:5, 2:5] = True                          # ... even where occluded
  loss = homography_loss(bad.requires_grad_(), segs, occ_bad)
  assert loss.item() == pytest.approx(9 * 8.0 / (24 * 32), rel=1e-3)
  assert homography_loss(flow, torch.zeros_like(segs), occ).item() == 0   # no segment, no term


def test_flownet_shapes_and_bidirectional_loss():
  net = FlowNet(FlowNetConfig(output_level=2))
  assert sum(p.numel() for p in net.parameters()) < 3_000_000
  net = FlowNet(TINY)
  img1, img2 = _smooth_image(42, 58, 1), _smooth_image(42, 58, 2)   # not multiples of 8: padded inside
  flows = net(img1, img2, backward=True)
  assert [tuple(f.shape) for f in flows] == [(2, 2, 42, 58), (2, 2, 6, 8)]
  segs = torch.ones(2, 42, 58, dtype=torch.long)
  terms = unsupervised_loss(flows, img1, img2, segs, LossConfig())
  terms.total.backward()
  assert np.isfinite(terms.total.item()) and terms.photometric > 0
  assert all(p.grad is not None for p in net.parameters())


def test_normalize_features_gives_the_cost_volume_unit_scale():
  g = torch.Generator().manual_seed(3)
  f1 = 0.01 * torch.randn(2, 32, 5, 7, generator=g) + 0.02   # the scale of freshly initialised pyramid features
  f2 = torch.roll(f1, 1, -1)
  a, b = normalize_features(f1, f2)
  both = torch.cat([a, b], 1)
  torch.testing.assert_close(both.mean((1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
  torch.testing.assert_close(both.std((1, 2, 3), unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
  a2, b2 = normalize_features(5 * f1 - 1, 5 * f2 - 1)      # invariant to an affine change of the features
  torch.testing.assert_close(a2, a, atol=1e-3, rtol=0)
  corr = correlation(a, b, 1)
  assert corr.std(1).mean() > 0.1                           # raw: ~1e-4, drowned by the other estimator inputs
  # f1 at x is f2 at x + 1 (the last column has no match): the peak is at dx = +1, dy = 0
  assert torch.equal(corr.argmax(1)[..., :-1], torch.full((2, 5, 6), 4 + 1))


def test_flownet_fits_a_shifted_pair_in_both_directions(one_thread):
  """The decisive check of the cost volume: on one textured pair shifted by a known (dx, dy) the forward flow
  must go to +shift and the backward flow to -shift. With the raw (unnormalised) correlation both directions
  got the same flow (learnt from appearance alone), so a real run never beat zero flow."""
  cfg = FlowNetConfig(channels=(8, 16, 16), output_level=1, radius=2, reduce=8, estimator=(32, 16), context=(16, 16),
                      dilations=(1, 2))
  img1 = _smooth_image(32, 64, 0)
  shift = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
  img2 = warp(img1, -shift.expand(1, 2, 32, 64))   # img1 at p is img2 at p + shift
  torch.manual_seed(0)
  net = FlowNet(cfg)
  opt = torch.optim.Adam(net.parameters(), lr=2e-3)
  for _ in range(80):
    terms = unsupervised_loss(net(img1, img2, backward=True), img1, img2, occlusion_aware=False)
    opt.zero_grad()
    terms.total.backward()
    opt.step()
  flow, _ = net.predict(img1, img2)
  back, _ = net.predict(img2, img1)
  inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))   # away from pixels that leave the frame
  torch.testing.assert_close(flow[inner].mean((2, 3)), shift.view(1, 2), atol=0.4, rtol=0)
  torch.testing.assert_close(back[inner].mean((2, 3)), -shift.view(1, 2), atol=0.4, rtol=0)


# ---- ego-motion and object velocity from exact flow + depth

@pytest.fixture(scope="module")
def cut_in():
  return make_scene(2, 2.5, "mici", "cut_in")


def test_ego_motion_from_exact_flow_and_depth_beats_constant_velocity(cut_in):
  cam, rpy = gt_camera(cut_in, "model", (128, 64))
  f = 40
  g = scene_gt(cut_in, f, cam, rpy, "model")
  est = ego_motion(g.flow, g.depth, cam, static=g.flow_valid & (g.instance == 0), dt=1 / cut_in.fps)
  truth = scene_relative_pose(cut_in, f)
  err = relative_pose_errors((est.rotation, est.translation), truth)
  cv = relative_pose_errors(scene_relative_pose(cut_in, f - 1), truth)   # constant velocity: last pair's motion
  assert err.trans_m < 1e-4 and err.rot_deg < 1e-4, err                # stated tolerance: 0.1 mm, 1e-4 degrees
  assert err.trans_m < cv.trans_m and err.rot_deg < cv.rot_deg
  assert est.velocity[0] == pytest.approx(g.ego.v, rel=0.01)
  assert est.yaw_rate == pytest.approx(g.ego.yaw_rate, abs=0.01)
  with pytest.raises(ValueError, match="usable pixels"):
    ego_motion(g.flow, g.depth, cam, static=np.zeros_like(g.flow_valid))
  with pytest.raises(ValueError, match="need flow"):
    ego_motion(g.flow[:-1], g.depth, cam)


def test_object_velocity_from_flow_depth_and_masks_matches_box3d(cut_in):
  cam, rpy = gt_camera(cut_in, "model", (256, 128))
  f = 40
  g, g1 = scene_gt(cut_in, f, cam, rpy, "model"), scene_gt(cut_in, f + 1, cam, rpy, "model")
  ego = ego_motion(g.flow, g.depth, cam, static=g.flow_valid & (g.instance == 0), dt=1 / cut_in.fps)
  objs = object_velocities(g.flow, g.depth, g1.depth, g.instance, cam, ego, valid=g.flow_valid)
  boxes = {b.id: b for b in g.boxes3d}
  big = [o for o in objs if o.n_pixels >= 500]
  assert big, [o.n_pixels for o in objs]
  for o in big:   # stated tolerance: 0.25 m/s (forward vs central differences, turning bodies)
    np.testing.assert_allclose(o.velocity, boxes[o.id].velocity, atol=0.25)
    np.testing.assert_allclose(o.rel_velocity, boxes[o.id].rel_velocity, atol=0.25)


# ---- training: FlowTeacher weights and exact resume

@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  return write_segment(make_scene(4, 0.25, "mici", "cut_in"), tmp_path_factory.mktemp("flowseg"), progress=False)


@pytest.fixture
def one_thread():
  """Single-threaded torch: far faster for these tiny tensors on a busy 2-core machine; restored afterwards."""
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def test_gt_segments_split_stuff_into_components():
  sem = np.array([[0, 0, 7, 7], [3, 0, 7, 3], [3, 3, 0, 0]], np.uint8)
  inst = np.array([[0, 0, 0, 0], [0, 5, 0, 0], [0, 0, 0, 0]], np.int32)
  seg = gt_segments(sem, inst)
  assert seg[1, 1] != seg[0, 0] and seg[0, 0] == seg[0, 1]          # the actor is its own segment
  assert seg[2, 2] == seg[2, 3] != seg[0, 0]                         # two road components
  assert seg[1, 3] != seg[1, 0] and set(np.unique(seg)) == set(range(1, seg.max() + 1))


def test_flow_train_resumes_exactly_and_writes_what_flowteacher_loads(segment, tmp_path, one_thread):
  config = TrainConfig((str(segment),), scale=0.25, masks="gt", net=TINY, batch=2, warmup=2, occ_from=2, holdout=0.25)
  data = load_pairs(config.segments, config.scale, config.masks, config.holdout, progress=False)
  assert data.train == [(0, 0), (0, 1)] and data.held == [(0, 3)] and data.segments[0].shape == (5, 64, 128)
  ref, step = train_flow(config, tmp_path / "a", steps=4, save_every=2, progress=False, data=data)
  assert step == 4
  train_flow(config, tmp_path / "b", steps=4, save_every=2, progress=False, data=data, halt_after=3)   # "killed"
  resumed, step = train_flow(config, tmp_path / "b", steps=4, save_every=2, progress=False, data=data)   # from 2
  assert step == 4
  for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
    assert torch.equal(a, b), k
  result = evaluate(ref, data)   # the held-out pair against the generator's flow at the same 128x64 frame
  assert result["pairs"] == 1 and result["frame"] == "medmodelx0.25 128x64" and result["valid_pixels"] > 4000
  assert np.isfinite(result["epe"]) and result["zero_epe"] > 0.5 and 0 <= result["fl_all"] <= 1
  assert result["ego_gt_flow"]["trans_m"] < 1e-3 and set(result["ego_flow"]) == {"trans_m", "trans_rel_pct", "rot_deg"}
  assert result["ego_cv_mean"]["trans_m"] < 1e-9 and result["ego_failed"] == 0   # one pair: the mean is its motion

  class Collapsed(FlowNet):   # every pixel sent out of the frame and occluded: no static pixel left for ego-motion
    def predict(self, img1, img2):
      return torch.full((1, 2, 64, 128), 500.0), torch.ones(1, 1, 64, 128, dtype=torch.bool)

  class Exact(FlowNet):   # the generator's flow, occluded where it is not visible in both frames (its flow is 0)
    def predict(self, img1, img2):
      occluded = torch.from_numpy(~data.truth.valid[0])[None, None]
      return torch.from_numpy(data.truth.flow[0]).permute(2, 0, 1)[None], occluded

  for max_residual in (0.02, None):
    exact = evaluate(Exact(TINY), data, max_residual=max_residual)
    assert exact["epe"] < 1e-6 and exact["ego_max_residual"] == max_residual
    assert exact["ego_flow"]["trans_m"] < 0.01 and exact["ego_failed"] == 0
  collapsed = evaluate(Collapsed(TINY), data)
  assert collapsed["ego_failed"] == 1 and collapsed["epe"] > 400
  assert collapsed["ego_flow"]["trans_rel_pct"] == pytest.approx(100.0, abs=0.01)   # scored as no motion
  with pytest.raises(ValueError, match="other settings"):
    train_flow(TrainConfig((str(segment),), lr=1e-3, net=TINY), tmp_path / "b", steps=6, progress=False, data=data)

  if not torch.cuda.is_available():
    with pytest.raises(ValueError, match="no CUDA device"):
      train_flow(config, tmp_path / "d", steps=1, progress=False, data=data, device="cuda")
  # a saved pair file gives the same data and evaluation without decoding or rendering
  saved = load_pairs_npz(save_pairs(data, tmp_path / "pairs.npz"))
  assert (saved.train, saved.held, saved.camera, saved.paths) == (data.train, data.held, data.camera, data.paths)
  assert (saved.scale, saved.masks, saved.holdout) == (0.25, "gt", 0.25)
  assert all(np.array_equal(a, b) for a, b in zip(saved.frames + saved.segments, data.frames + data.segments))
  assert evaluate(ref, saved) == result
  parser = argparse.ArgumentParser()
  add_arguments(parser)
  with pytest.raises(ValueError, match="--scale 0.5 contradicts"):
    run(parser.parse_args(["--pairs", str(tmp_path / "pairs.npz"), "--scale", "0.5", "--out", str(tmp_path / "c")]))
  with pytest.raises(ValueError, match="not both"):
    run(parser.parse_args([str(segment), "--pairs", str(tmp_path / "pairs.npz"), "--out", str(tmp_path / "c")]))
  with pytest.raises(FileNotFoundError, match="no pair file"):
    run(parser.parse_args(["--pairs", str(tmp_path / "none.npz"), "--out", str(tmp_path / "c")]))

  weights = tmp_path / "a"
  info = FlowTeacher.resolve_weights(weights)
  assert info.path == weights / "flow" and info.teacher == "flow" and len(info.sha256) == 64
  saved = load_file(str(weights / "flow" / "model.safetensors"))
  assert all(torch.equal(saved[k], v) for k, v in ref.state_dict().items())
  teacher = FlowTeacher.load(info)
  assert teacher.input.clip == 2 and (teacher.input.camera.width, teacher.input.camera.height) == (128, 64)
  pairs = np.stack([data.frames[0][0:2], data.frames[0][3:5]])
  out = teacher(pairs)
  assert isinstance(out, FlowMaps) and out.flow.shape == (2, 64, 128, 2) and out.occlusion.shape == (2, 64, 128)
  x = torch.from_numpy(pairs).permute(0, 1, 4, 2, 3).float() / 255
  flow, occ = ref.predict(x[:, 0], x[:, 1])
  np.testing.assert_allclose(out.flow, flow.permute(0, 2, 3, 1).numpy(), atol=1e-5)
  assert np.array_equal(out.occlusion, occ[:, 0].numpy())
  with pytest.raises(ValueError, match="frame pairs"):
    teacher(pairs[:, 0])


def test_flowteacher_missing_weights_say_how_to_train_them(tmp_path, monkeypatch):
  monkeypatch.delenv("FAIR_WEIGHTS_DIR", raising=False)
  with pytest.raises(MissingWeightsError, match="no official weights exist.*fair flow-train"):
    FlowTeacher.resolve_weights()
  with pytest.raises(MissingWeightsError) as e:
    FlowTeacher.resolve_weights(tmp_path)
  assert str(tmp_path / "flow") in str(e.value) and "fair flow-train" in str(e.value)
  with pytest.raises(ValueError, match="no official model ids"):
    FlowTeacher.resolve_weights(tmp_path, "facebook/unsamflow")
