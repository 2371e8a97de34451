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
  "export": ("tools.fair.students.export", "export a student to ONNX with its metadata"),
  "replay": ("tools.fair.replay", "run a segment through modeld_fair: rlog + overlay video + latency report"),
  "predict": ("tools.fair.predict", "run the student on images or a video of any pinhole camera: overlays + report"),
  "profile": ("tools.fair.profile", "a student's params, FLOPs, bytes, ops, CPU latency and Adreno 630 estimate"),
  "label": ("tools.fair.labels.cli", "pseudo-label segments with teachers into a sharded, resumable label store"),
  "flow-train": ("tools.fair.flow.train", "train the unsupervised (UnSAMFlow-style) flow network on segments"),
  "lanes": ("tools.fair.lanes.cli", "lane pseudo-labels: init lane points, track them, lift to the road frame"),
  "train": ("tools.fair.distill.cli", "train / distil a student from a recipe config (resumes exactly)"),
  "stats": ("tools.fair.data.stats", "dataset statistics and plots (class balance, depth, objects, lanes)"),
}


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(prog="fair", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  chosen = argv[0] if argv and argv[0] in COMMANDS else None
  for name, (module, help_text) in COMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text)
    if name == chosen:
      importlib.import_module(module).add_arguments(p)
  args = parser.parse_args(argv)
  module = importlib.import_module(COMMANDS[args.command][0])
  from tools.fair.routes.errors import RouteError
  try:
    return module.run(args) or 0
  except (FileNotFoundError, ValueError, IndexError, ImportError, RouteError) as e:  # user errors: one clear line
    print(f"fair {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
