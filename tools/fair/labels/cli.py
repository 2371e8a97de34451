"""`fair label`: pseudo-label segments with teachers into a sharded, resumable label store (docs/labels.md).

  fair label SEGMENTS... --teachers dpt-depth,detr --weights DIR --out STORE [--device auto|cpu|cuda|mps] [--batch 8]
             [--scale 0.5] [--shard i/N] [--shard-frames 100] [--overwrite] [--teacher-opt NAME.FIELD=VALUE ...]

--shard i/N labels the i-th of N disjoint parts of the sorted segment list (segment k goes to part k mod N),
so N machines can share a job list without talking to each other. Without --shard the part is this process's
rank under torchrun (RANK / WORLD_SIZE) or srun (SLURM_PROCID / SLURM_NTASKS), each on its own GPU
(cuda:LOCAL_RANK): `torchrun --nproc-per-node 8 -m tools.fair.cli label SEGMENTS... --out STORE` labels on 8 GPUs
into one store, whose manifest the processes share under a lock. A killed process's part resumes by running
the same command again (finished shards are skipped).

--teacher-opt sets one field of a teacher's config dataclass (parsed by the field's type: numbers, true/false,
comma-separated tuples, none), e.g. cotracker.grid=8,16 or sam3.prompts=car,pedestrian. A config's `prompter`
field names a detection teacher instead (sam2.prompter=detr): it is loaded from the same --weights (the very
instance when it is also in --teachers) and its first-frame detections prompt the boxes; SAM 2 without one is
an error, as it would label nothing. The options are recorded with each shard (ShardEntry.options).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

from selfdrive.modeld_fair.camera import CameraModel
from tools.fair.device import add_device_argument, resolve_device
from tools.fair.distributed import World
from tools.fair.labels.pipeline import LabelConfig, label_segments
from tools.fair.labels.store import LabelStore


def parse_shard(text: str) -> tuple[int, int]:
  """"i/N" -> (i, N) with 0 <= i < N; ValueError otherwise."""
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must be i/N (e.g. 0/4), got {text!r}") from None
  if not 0 <= i < n:
    raise ValueError(f"--shard {text}: need 0 <= i < N")
  return i, n


def partition(segments: Sequence[str | Path], i: int, n: int) -> list[str]:
  """Part i of n of the segments: the sorted, de-duplicated list's items whose position k has k % n == i."""
  ordered = sorted({str(s) for s in segments})
  return ordered[i::n]


def config_class(cls: type) -> type | None:
  """The teacher class's config dataclass with a `camera` field (the type of load's `config`), else None."""
  try:
    hint = typing.get_type_hints(cls.load).get("config")
  except (NameError, TypeError):   # annotations that do not resolve: no config we can build
    return None
  for c in typing.get_args(hint) or (hint,):
    if dataclasses.is_dataclass(c) and "camera" in {f.name for f in dataclasses.fields(c)}:
      return c
  return None


def parse_value(text: str, tp, where: str):
  """`text` as a value of type `tp` (int, float, bool, str, X | None, tuple[X, ...] or tuple[X, Y] from
  comma-separated items); ValueError naming `where` otherwise."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if type(None) in args and text.strip().lower() == "none":
      return None
    rest = [a for a in args if a is not type(None)]
    if len(rest) == 1:
      return parse_value(text, rest[0], where)
  elif origin is tuple:
    items = [x.strip() for x in text.split(",") if x.strip()]
    kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
    if len(kinds) != len(items):
      raise ValueError(f"{where}: expected {len(kinds)} comma-separated values, got {text!r}")
    return tuple(parse_value(x, k, where) for x, k in zip(items, kinds))
  elif tp is bool:
    if text.lower() in ("true", "1", "yes", "false", "0", "no"):
      return text.lower() in ("true", "1", "yes")
  elif tp in (int, float, str):
    try:
      return tp(text)
    except ValueError:
      pass
  else:
    raise ValueError(f"{where}: a field of type {tp} cannot be set from the command line")
  raise ValueError(f"{where}: {text!r} is not a {tp}")


def parse_teacher_opts(items: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, str]]:
  """["NAME.FIELD=VALUE", ...] -> {NAME: {FIELD: VALUE}} for every teacher in `names` and every prompter they
  name; ValueError for malformed items and other teachers."""
  parsed = []
  for item in items:
    key, eq, value = item.partition("=")
    name, dot, fld = key.strip().rpartition(".")
    if not (eq and dot and name and fld):
      raise ValueError(f"--teacher-opt must be NAME.FIELD=VALUE (e.g. sam2.prompter=detr), got {item!r}")
    parsed.append((item, name, fld, value.strip()))
  out: dict[str, dict[str, str]] = {n: {} for n in names}
  out |= {v: {} for _, n, f, v in parsed if n in names and f == "prompter"}
  for item, name, fld, value in parsed:
    if name not in out:
      raise ValueError(f"--teacher-opt {item!r}: teacher {name!r} is neither in --teachers ({', '.join(names)}) "
                       "nor a prompter of one")
    out[name][fld] = value
  return out


def teacher_config(cls: type, camera: CameraModel, options: Mapping[str, str] | None = None):
  """The teacher class's config dataclass (the type of load's `config`) with its defaults, `camera` and
  `options` (field name -> text, parsed by the field's type); None when the class declares no config with a
  camera (then it must take the frame as it is, and options are an error)."""
  c, options = config_class(cls), dict(options or {})
  if c is None:
    if options:
      raise ValueError(f"teacher {cls.name!r} has no config to set {', '.join(options)} in")
    return None
  hints = typing.get_type_hints(c)
  fields = [f.name for f in dataclasses.fields(c) if f.name != "camera"]
  values = {}
  for k, text in options.items():
    if k not in fields:
      raise ValueError(f"teacher {cls.name!r} has no option {k!r} (its {c.__name__}: {', '.join(fields)}; "
                       "the camera follows --scale)")
    values[k] = parse_value(text, hints[k], f"{cls.name}.{k}")
  return c(camera=camera, **values)


def _has_prompter(cls: type) -> bool:
  c = config_class(cls)
  return c is not None and "prompter" in {f.name for f in dataclasses.fields(c)}


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segments", nargs="+", type=Path, help="segment folders (rlog + fcamera.hevc)")
  p.add_argument("--teachers", required=True, help="comma-separated teacher names, e.g. dpt-depth,detr")
  p.add_argument("--weights", default=None,
                 help="weights DIR with one folder per teacher (default: $FAIR_WEIGHTS_DIR, else the HF cache)")
  p.add_argument("--out", required=True, type=Path, help="label store folder (created; resumed when it exists)")
  add_device_argument(p)
  p.add_argument("--batch", type=int, default=LabelConfig.batch, help="frames per teacher call (default 8)")
  p.add_argument("--scale", type=float, default=LabelConfig.scale,
                 help="model frame = 512x256 medmodel x scale (default 0.5: 256x128)")
  p.add_argument("--shard", help="i/N: label only part i of N of the sorted segments (default: the process's "
                 "rank/world size under torchrun or srun, else 0/1)")
  p.add_argument("--shard-frames", type=int, default=LabelConfig.shard_frames,
                 help="consecutive frames per shard file (default 100)")
  p.add_argument("--overwrite", action="store_true", help="relabel shards that are already in the store")
  p.add_argument("--teacher-opt", action="append", default=[], metavar="NAME.FIELD=VALUE",
                 help="set a field of a teacher's config, e.g. cotracker.grid=8,16; sam2.prompter=detr names the "
                      "detection teacher (from --weights) whose first-frame boxes prompt SAM 2 (repeatable)")


def run(args: argparse.Namespace) -> int:
  """Load the teachers and label this machine's part of the segments."""
  from tools.fair.teachers import MissingWeightsError, load_teacher, teacher_class   # torch + transformers
  world = World.from_env()
  i, n = parse_shard(args.shard) if args.shard is not None else (world.rank, world.size)
  names = [t.strip() for t in args.teachers.split(",") if t.strip()]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"--teachers needs distinct names, got {args.teachers!r}")
  cfg = LabelConfig(batch=args.batch, scale=args.scale, shard_frames=args.shard_frames, overwrite=args.overwrite)
  segments = partition(args.segments, i, n)
  opts = parse_teacher_opts(args.teacher_opt, names)
  device = str(world.device(resolve_device(args.device)))
  teachers: dict = {}
  missing: dict[str, str] = {}   # teacher -> what it lacks: all named in one error, not one per run
  options = {name: dict(sorted(opts[name].items())) for name in names}
  load = lambda name, o: load_teacher(name, args.weights, device,  # noqa: E731
                                      config=teacher_config(teacher_class(name), cfg.camera, o))
  # prompted teachers last, so that a prompter that is also labelling is the very same instance
  for name in sorted(names, key=lambda x: _has_prompter(teacher_class(x))):
    if not _has_prompter(teacher_class(name)):
      try:
        teachers[name] = load(name, opts[name])
      except MissingWeightsError as e:
        missing[name] = str(e)
      continue
    own = dict(opts[name])
    prompter_name = own.pop("prompter", None)
    if prompter_name is None:
      raise ValueError(f"teacher {name!r} needs box prompts: add --teacher-opt {name}.prompter=detr (a detection "
                       f"teacher whose first-frame boxes prompt it, loaded from --weights DIR/detr)")
    if "detection" not in teacher_class(prompter_name).tasks:
      raise ValueError(f"--teacher-opt {name}.prompter={prompter_name}: not a detection teacher")
    pre = opts.get(prompter_name, {})
    if prompter_name in missing:
      continue
    try:
      prompter = teachers.get(prompter_name) or load(prompter_name, pre)
    except MissingWeightsError as e:
      missing[prompter_name] = str(e)
      continue
    config = dataclasses.replace(teacher_config(teacher_class(name), cfg.camera, own), prompter=prompter)
    try:
      teachers[name] = load_teacher(name, args.weights, device, config=config)
    except MissingWeightsError as e:
      missing[name] = str(e)
      continue
    # the prompter's weights and options shape these labels as much as the teacher's own
    options[name] |= {"prompter.weights_hash": prompter.weights.sha256} | {f"prompter.{k}": v for k, v in pre.items()}
  if missing:
    raise MissingWeightsError(f"{len(missing)} teacher(s) lack weights ({', '.join(missing)}):\n" +
                              "\n".join(missing.values()))
  teachers = {name: teachers[name] for name in names}
  if not segments:
    print(f"fair label: part {i}/{n} has no segments")
    return 0
  report = label_segments(segments, teachers, LabelStore(args.out), cfg, progress=not args.quiet, options=options)
  print(f"fair label: {len(segments)} segments, {report.frames} frames decoded in {report.seconds:.1f} s "
        f"({report.fps:.1f} frames/s); {len(report.written)} shards written, {report.skipped_shards} already done, "
        f"{report.skipped_segments} segments complete -> {args.out}")
  busy = [f"{name} {report.teacher_fps(name):.1f}" for name in names if report.teacher_seconds.get(name)]
  if busy:
    print(f"fair label: frames/s of each teacher's own time: {', '.join(busy)}")
  return 0
