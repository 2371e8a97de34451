#!/usr/bin/env python3
"""Where each unsupervised flow loss term has its minimum along flow = a * exact flow (held-out generated pairs).

A term whose minimum lies below a = 1 pulls a trained network's flow short, and ego-motion from that flow comes
out short by about as much. Scans a = 0 .. 1.3 on the held-out pairs of a `--save-pairs` file (frames as decoded
and warped for training, the generator's exact flow and visibility), on the generator-visible pixels, for the
sharp photometric term, the blurred terms (LossConfig.blur_sigmas) and the weighted smoothness term. Without
`--pairs` the flow benchmark's five segments are generated and saved first (~2 min). Writes
docs/benchmarks/flow_loss_scan.md.

  .venv/bin/python bench/flow_loss_scan.py [--pairs .flowdata/pairs_s025_gt.npz]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402
from tools.fair.flow.losses import (LossConfig, blurred_photometric_loss, photometric_loss,  # noqa: E402
                                    smoothness_loss)
from tools.fair.flow.model import warp  # noqa: E402
from tools.fair.flow.train import load_pairs, load_pairs_npz, save_pairs  # noqa: E402
from tools.fair.progress import progress_bar  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ROOT / ".flowdata/pairs_s025_gt.npz"
SEGMENTS = ((11, "highway"), (12, "city"), (13, "curvy"), (14, "cut_in"), (15, "default"))   # docs/benchmarks/flow.md
SCALES = np.round(np.arange(0.0, 1.31, 0.05), 2)
SIGMAS = (1.0, 2.0, 4.0, 8.0)   # each blur on its own (the defaults and the wider ones they replaced)


def make_pairs(path: Path) -> Path:
  """The flow benchmark's pair file: five generated 4 s segments at 128x64 with --masks gt."""
  from tools.fair.sim import make_scene
  from tools.fair.sim.cli import write_segment
  with tempfile.TemporaryDirectory() as tmp:
    segs = [write_segment(make_scene(seed, 4.0, "mici", scenario), tmp, progress=False) for seed, scenario in SEGMENTS]
    return save_pairs(load_pairs(segs, 0.25, "gt"), path)


def scan(data, config: LossConfig = LossConfig()) -> dict[str, np.ndarray]:
  """Mean of each term over the held-out pairs at every a of SCALES (forward direction only)."""
  truth = data.truth
  blurs = {f"blurred, sigma {s:g}": (s,) for s in sorted(set(SIGMAS) | set(config.blur_sigmas))}
  sums = {k: np.zeros(len(SCALES)) for k in ("sharp", "smoothness", *blurs)}
  for k, (s, t) in enumerate(progress_bar(truth.pairs.tolist(), desc="scan", unit="pair")):
    img1, img2 = (torch.from_numpy(data.frames[s][i][None]).permute(0, 3, 1, 2).float() / 255 for i in (t, t + 1))
    exact = torch.from_numpy(truth.flow[k]).permute(2, 0, 1)[None].float()
    visible = torch.from_numpy(truth.valid[k])[None, None]
    for j, a in enumerate(SCALES):
      flow = float(a) * exact
      sums["sharp"][j] += photometric_loss(img1, warp(img2, flow), visible, config.w_l1, config.w_ssim).item()
      sums["smoothness"][j] += config.w_smooth * smoothness_loss(flow, img1, config.edge_alpha).item()
      for name, sigma in blurs.items():
        sums[name][j] += blurred_photometric_loss(img1, img2, flow, visible, sigma).item()
  mean = {k: v / len(truth.pairs) for k, v in sums.items()}
  # blurred_photometric_loss sums its sigmas' terms: the default set is the sum of the single-sigma scans
  out = {"sharp": mean.pop("sharp"), "blurred": sum(mean[f"blurred, sigma {s:g}"] for s in config.blur_sigmas)}
  out |= mean
  out["sharp + smoothness"] = out["sharp"] + out["smoothness"]
  out["sharp + blurred + smoothness"] = out["sharp + smoothness"] + config.w_blur * out["blurred"]
  return out


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--pairs", type=Path, default=None, help=f"a --save-pairs file (default {DEFAULT_PAIRS}, made "
                  "if missing)")
  ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/flow_loss_scan.md")
  args = ap.parse_args()
  torch.set_num_threads(1)
  path = args.pairs or DEFAULT_PAIRS
  if args.pairs is None and not path.is_file():
    make_pairs(path)
  data = load_pairs_npz(path)
  if data.truth is None:
    raise SystemExit(f"{path} has no held-out ground truth (made from real segments?)")
  terms = scan(data)
  config = LossConfig()
  shown = SCALES[::2]
  lines = [header("Flow loss terms along a * exact flow", f".venv/bin/python bench/flow_loss_scan.py"
                  f"{'' if args.pairs is None else ' --pairs ' + str(args.pairs)}"),
           f"- data: {len(data.truth.pairs)} held-out pairs of `{path.name}` ({data.camera.name} "
           f"{data.camera.width}x{data.camera.height}; the flow benchmark's segments), the generator's exact flow "
           "scaled by a, generator-visible pixels, forward direction",
           f"- terms (mean per pair) at the default LossConfig: sharp = {config.w_l1} L1 + {config.w_ssim} "
           "(1 - SSIM) / 2; blurred = "
           f"sigmas {', '.join(f'{s:g}' for s in config.blur_sigmas)} (weight {config.w_blur:g}); smoothness x "
           f"{config.w_smooth:g}", "",
           "| term | argmin a | " + " | ".join(f"{a:.1f}" for a in shown) + " |",
           "| --- | ---: |" + " ---: |" * len(shown)]
  for name, v in terms.items():
    lines.append(f"| {name} | {SCALES[int(np.argmin(v))]:.2f} | " + " | ".join(f"{x:.4f}" for x in v[::2]) + " |")
  best = {k: SCALES[int(np.argmin(v))] for k, v in terms.items()}
  wide = ", ".join(f"sigma {s:g} at a = {best[f'blurred, sigma {s:g}']:.2f}" for s in SIGMAS)
  lines += ["", f"Lowest at: the sharp terms (with smoothness) a = {best['sharp + smoothness']:.2f}; the default "
            f"blurred terms a = {best['blurred']:.2f}; the full default loss a = "
            f"{best['sharp + blurred + smoothness']:.2f}. Each blur alone: {wide}. A term lowest below a = 1 pulls "
            "the trained flow short, and ego-motion from it by about as much (LossConfig.blur_sigmas).", ""]
  write_report(args.out, "\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
