"""`fair`: the command line of fairpilot's offline tools.

Each subcommand lives in its own module and is imported only when used, so `fair --help`
stays fast and a command never pays for another's heavy imports.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
  "sim": ("tools.fair.sim.cli", "generate a driving segment with exact ground truth"),
  "inspect": ("tools.fair.overlay", "render a segment's frames with overlays to PNG/MP4"),
  "demo": ("tools.fair.demo", "run the main job on the bundled sample segments"),
  "export": ("tools.fair.export.cli", "export a training run's student: onnx, onnx-fp16, onnx-int8, tinygrad, tensorrt"),
  "replay": ("tools.fair.replay", "run a segment through modeld_fair: rlog + overlay video + latency report"),
  "predict": ("tools.fair.predict", "run the student on images or a video of any pinhole camera: overlays + report"),
  "compare": ("tools.fair.compare", "score openpilot's logged modelV2 / radarState beside the student's outputs"),
  "val": ("tools.fair.val", "score a student against ground truth on simulated segments: per-head tables + plots"),
  "profile": ("tools.fair.profile", "a student's params, FLOPs, bytes, ops, CPU latency and Adreno 630 estimate"),
  "cache": ("tools.fair.data.cache_cli", "decode segments once into a training frame cache (resumable)"),
  "label": ("tools.fair.labels.cli", "pseudo-label segments with teachers into a sharded, resumable label store"),
  "flow-train": ("tools.fair.flow.train", "train the unsupervised (UnSAMFlow-style) flow network on segments"),
  "lanes": ("tools.fair.lanes.cli", "lane pseudo-labels: init lane points, track them, lift to the road frame"),
  "ego": ("tools.fair.labels.ego", "ego-motion labels from a route's cameraOdometry / carState into a label store"),
  "train": ("tools.fair.distill.cli", "train / distil a student from a recipe config (resumes exactly)"),
  "stats": ("tools.fair.data.stats", "dataset statistics and plots (class balance, depth, objects, lanes)"),
  "env": ("tools.fair.env", "versions, devices and where teacher weights are looked for (paste it into bug reports)"),
}

S = "data/samples/fairsim-tici-cut_in-s1--0"   # a bundled sample segment
# name -> the examples section of `fair NAME --help`
EXAMPLES = {
  "sim": "fair sim --out /tmp/segs --seconds 10 --seed 1 --camera mici --scenario cut_in",
  "inspect": f"fair inspect {S} --gt --out /tmp/inspect.mp4\nfair inspect {S} --out /tmp/frames --max-frames 5",
  "demo": "fair demo\nfair demo --runtime tinygrad --max-frames 20",
  "export": "fair export runs/nano --format onnx-int8 --real road_photos/\n"
            "fair export runs/nano --format tinygrad --device CPU --half",
  "replay": f"fair replay {S} --out /tmp/replay\nfair replay {S} --no-video --max-frames 10 "
            "--ref data/replay_refs/fairsim-tici-cut_in-s1--0.npz",
  "predict": "fair predict photo.png --intrinsics 910,910,582,437 --height 1.22 --out /tmp/predict\n"
             "fair predict clip.mp4 --intrinsics 1000,1000,640,360 --pitch 0.02 --out /tmp/predict",
  "val": f"fair val selfdrive/modeld_fair/models {S} --out /tmp/val --stride 10",
  "compare": f"fair replay {S} --out /tmp/r --no-video\nfair compare /tmp/r --out /tmp/compare",
  "profile": "fair profile nano selfdrive/modeld_fair/models/student.onnx --report /tmp/profile.md",
  "cache": f"fair cache {S} --out /tmp/cache\nfair cache SEGMENTS... --out /tmp/cache --every 2 --workers 2",
  "label": f"fair label {S} --teachers dpt-depth,detr --weights ~/weights --out /tmp/store\n"
           "fair label SEGMENTS... --teachers dinov2 --out /tmp/store --shard 1/4 --device cuda:1\n"
           "torchrun --nproc-per-node 2 -m tools.fair.cli label SEGMENTS... --teachers dinov2 --out /tmp/store",
  "flow-train": f"fair flow-train {S} --out /tmp/flow --minutes 5\n"
                "python -m tools.fair.flow.train --pairs pairs.npz --out /tmp/flow --device cuda --steps 20000",
  "lanes": f"fair lanes {S} --tracker lk --init gt --out /tmp/store",
  "ego": f"fair ego {S} --out /tmp/store",
  "train": "fair train tools/fair/distill/recipes/nano_gt.toml --steps 200 --out /tmp/run\n"
           "fair train tools/fair/distill/recipes/nano_gt.toml --out /tmp/run --resume\n"
           "torchrun --nproc-per-node 2 -m tools.fair.cli train tools/fair/distill/recipes/nano_gt.toml --out /tmp/ddp",
  "stats": "fair stats CACHE --out /tmp/stats --labels STORE --teacher depth=dpt-depth",
  "env": "fair env\nfair env --weights ~/weights",
}


def examples(lines: str) -> str:
  return "examples:\n" + "".join(f"  {line}\n" for line in lines.splitlines())


def version() -> str:
  from importlib.metadata import PackageNotFoundError
  from importlib.metadata import version as dist_version
  try:
    return dist_version("fairpilot")
  except PackageNotFoundError:   # a source tree that was never installed
    return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  raw = argparse.RawDescriptionHelpFormatter
  parser = argparse.ArgumentParser(prog="fair", description=__doc__.splitlines()[0], formatter_class=raw,
                                   epilog=examples("fair sim --out /tmp/segs --seed 1\nfair train --help\nfair env"))
  parser.add_argument("--version", action="version", version=f"fair {version()}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  chosen = argv[0] if argv and argv[0] in COMMANDS else None
  for name, (module, help_text) in COMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=raw,
                       epilog=examples(EXAMPLES[name]) if name in EXAMPLES else None)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if name == chosen:
      importlib.import_module(module).add_arguments(p)
  args = parser.parse_args(argv)
  from tools.fair.progress import set_quiet
  set_quiet(args.quiet)
  module = importlib.import_module(COMMANDS[args.command][0])
  from tools.fair.routes.errors import RouteError
  try:
    return module.run(args) or 0
  except (ValueError, IndexError, ImportError, RouteError, OSError) as e:  # user errors: one clear line
    # OSError: an --out that is a file, a full disk, a permission (FileNotFoundError is one too)
    print(f"fair {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
