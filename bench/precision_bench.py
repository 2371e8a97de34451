#!/usr/bin/env python3
"""nano and small students in FP32 / FP16 / INT8-PTQ (/ INT8-QAT): head metrics on held-out generated segments,
size, onnxruntime 1-thread latency (every variant timed side by side, as ratios to FP32), the Adreno 630 estimate,
and what limits INT8 (per-tensor SQNR against FP32, QDQ variants): docs/benchmarks/precision.md.

  .venv/bin/python bench/precision_bench.py --cache CACHE [--nano ONNX] [--qat-run RUN] [--rounds 6 --iters 20]

CACHE: a frame cache of held-out generated segments with ground truth, e.g. 4 segments of 5 s, seeds 5000-5003:
  generate_segments(OUT, 4, 5.0, 5000) then build_frame_cache(segments, CACHE, scale=0.5)
--nano: the nano ONNX (default: the bundled student); small is the seeded random-init small student (no trained
small exists), so its head metrics say nothing and are left out; its sizes, speeds and output agreement count.
--qat-run: a `fair train` run with `[quant] qat = true`; its FP32 and INT8 exports make the QAT rows.
INT8-PTQ is built as `fair export --format onnx-int8` builds it (calibration method chosen by agreement).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, pin_one_core, write_report  # noqa: E402
from selfdrive.modeld_fair.model_io import INPUT_NAME  # noqa: E402
from tools.fair.export import cli  # noqa: E402
from tools.fair.export.frames import segment_inputs  # noqa: E402
from tools.fair.export.precision import CALIBRATION_METHODS, to_fp16, to_int8  # noqa: E402

HEADS = [("depth AbsRel", "depth_abs_rel"), ("depth δ1", "depth_delta1"), ("mIoU", "miou"),
         ("vehicle IoU", ("iou", "vehicle")), ("AP50", "det_ap50"), ("lane err 20 m (m)", "lane_lat_err_20m")]


def metric(m: dict, key):
  return m[key[0]][key[1]] if isinstance(key, tuple) else m[key]


def session(path: Path, level: str = "all"):
  import onnxruntime as ort
  o = ort.SessionOptions()
  o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
  o.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
  return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def latency(variants: dict[str, tuple[Path, str]], frame: np.ndarray, rounds: int, iters: int) -> dict[str, float]:
  """Median ms per variant, 1 thread, all variants interleaved round by round on one pinned core."""
  pin_one_core()
  sess = {k: session(p, lvl) for k, (p, lvl) in variants.items()}
  feed = {INPUT_NAME: frame[None]}
  ts: dict[str, list[float]] = {k: [] for k in sess}
  for s in sess.values():
    for _ in range(5):
      s.run(None, feed)
  for _ in range(rounds):
    for k, s in sess.items():
      for _ in range(iters):
        t = time.perf_counter()
        s.run(None, feed)
        ts[k].append(time.perf_counter() - t)
  return {k: float(np.median(v) * 1e3) for k, v in ts.items()}


def sqnr(fp32: Path, qdq: Path, frames: np.ndarray, d: Path) -> dict[str, float]:
  """Per activation tensor: SQNR (dB) of the QDQ model's tensor against the FP32 model's (onnxruntime's
  qdq_loss_debug), the error accumulated up to that tensor."""
  from onnxruntime.quantization import qdq_loss_debug as dbg
  acts = {}
  for name, p in (("f", fp32), ("q", qdq)):
    dbg.modify_model_output_intermediate_tensors(str(p), str(d / f"{name}-aug.onnx"))
    acts[name] = dbg.collect_activations(str(d / f"{name}-aug.onnx"), [{INPUT_NAME: x[None]} for x in frames])
  err = dbg.compute_activation_error(dbg.create_activation_matching(acts["q"], acts["f"]))
  return {k: v["xmodel_err"] for k, v in err.items() if "xmodel_err" in v}


def build(name: str, fp32: Path, d: Path, calib, check, qat: tuple[Path, Path] | None) -> tuple[dict, dict]:
  """The variants of one student: {label: (path, ort level)}, and the notes (calibration, agreement, SQNR)."""
  from selfdrive.modeld_fair.runner import OnnxRuntimeRunner
  ref = cli.runner_outputs(OnnxRuntimeRunner(fp32), check)
  worst = {}
  for m in CALIBRATION_METHODS:
    p = to_int8(fp32, d / f"{name}-int8-{m}.onnx", calib, m)
    worst[m] = min(c.cosine for c in cli.compare(cli.runner_outputs(OnnxRuntimeRunner(p), check), ref,
                                                 cli.GATES["int8"]).values())
  best = max(worst, key=worst.get)
  v = {"FP32": (fp32, "all"), "FP16": (to_fp16(fp32, d / f"{name}-fp16.onnx"), "all"),
       "INT8-PTQ": (d / f"{name}-int8-{best}.onnx", "all")}
  extra = {"INT8-PTQ per-channel weights": (to_int8(fp32, d / f"{name}-pc.onnx", calib, best, per_channel=True), "all"),
           "INT8-PTQ attention quantized": (to_int8(fp32, d / f"{name}-attq.onnx", calib, best, float_attention=False),
                                            "all")}
  if qat:
    v |= {"FP32 (QAT run)": (qat[0], "all"), "INT8-QAT": (qat[1], "all")}
  agree = {k: cli.compare(cli.runner_outputs(OnnxRuntimeRunner(p), check), ref, cli.GATES["int8"])
           for k, (p, _) in {**v, **extra}.items() if k not in ("FP32", "FP32 (QAT run)")}
  s = {"chosen": sqnr(fp32, v["INT8-PTQ"][0], check[:8], d),
       "attention quantized": sqnr(fp32, extra["INT8-PTQ attention quantized"][0], check[:8], d)}
  return v | extra | {"FP32 at ORT_ENABLE_EXTENDED": (fp32, "extended"),
                      "INT8-PTQ at ORT_ENABLE_EXTENDED": (v["INT8-PTQ"][0], "extended")}, \
      {"calibration": worst, "best": best, "agreement": agree, "sqnr": s}


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--cache", type=Path, required=True, help="frame cache of held-out generated segments")
  ap.add_argument("--nano", type=Path, default=Path("selfdrive/modeld_fair/models/student.onnx"))
  ap.add_argument("--qat-run", type=Path, help="a `fair train` run with [quant] qat = true (nano)")
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--iters", type=int, default=20)
  ap.add_argument("--report", type=Path, default=Path("docs/benchmarks/precision.md"))
  a = ap.parse_args()
  import json

  import torch

  from tools.fair.data.dataset import StudentDataset
  from tools.fair.experiments.evaluate import evaluate_student
  from tools.fair.profile import SCENARIOS, estimate, onnx_graph
  from tools.fair.samples import sample_paths
  from tools.fair.students.export import export_student
  torch.set_num_threads(1)
  samples = sample_paths()
  calib = segment_inputs(samples, cli.CALIB_PER_SEGMENT, cli.CALIB_STRIDE, 0)
  check = segment_inputs(samples, cli.GENERATED_PER_SEGMENT, cli.VERIFY_STRIDE, cli.VERIFY_PHASE)
  val = StudentDataset(a.cache, use_gt=True)
  nano_id = json.loads(a.nano.with_suffix(".json").read_text())["model_id"] if a.nano.with_suffix(".json").is_file() \
      else a.nano.name
  text = [header("Precision: FP32 / FP16 / INT8 of the students", f"python bench/precision_bench.py --cache {a.cache} "
                 f"--nano {a.nano}" + (f" --qat-run {a.qat_run}" if a.qat_run else "")
                 + f" --rounds {a.rounds} --iters {a.iters}"), ""]
  with tempfile.TemporaryDirectory() as tmp:
    d = Path(tmp)
    qat = None
    if a.qat_run:
      f32 = cli.export(a.qat_run, "onnx", out=d / "qat-fp32")
      cli.export(a.qat_run, "onnx-int8", out=d / "qat-int8")
      qat = (d / "qat-fp32/student.onnx", d / "qat-int8/student.onnx")
      text += [f"QAT run: `{a.qat_run}` ({f32['model_id']}).", ""]
    else:
      text += ["INT8-QAT: no rows (no --qat-run given: no torch checkpoint of the bundled nano is kept, so it cannot "
               "be fine-tuned with [quant] qat here; a QAT run's rows come with --qat-run).", ""]
    text += [f"Latency: onnxruntime CPU, 1 intra-op thread, every variant interleaved in {a.rounds} rounds of "
             f"{a.iters} runs on one pinned core (median) on a shared machine: read the ratios, not the ms.", ""]
    export_student("small", 0, d / "small.onnx")
    for name, fp32, trained in (("nano", a.nano, True), ("small", d / "small.onnx", False)):
      variants, notes = build(name, fp32, d, calib, check, qat if name == "nano" else None)
      lat = latency(variants, check[0], a.rounds, a.iters)
      metrics = {k: evaluate_student(p, val) for k, (p, lvl) in variants.items()
                 if trained and lvl == "all"}
      adreno = {s.name: estimate(onnx_graph(fp32), s).ms for s in SCENARIOS}
      text += [f"## {name}: `{fp32 if trained else 'export_student(small, seed 0), random init'}`"
               + (f" ({nano_id})" if trained else ""), ""]
      if trained:
        text += [f"Head metrics on {metrics['FP32']['frames']} held-out generated frames (`{a.cache}`, "
                 "tools/fair/experiments/evaluate.py); (Δ relative to FP32).", ""]
      cols = [h for h, _ in HEADS] if trained else []
      text += ["| variant | " + " | ".join(cols + ["size (MB)", "smaller", "ms (1 thread)", "faster"]) + " |",
               "|---" * (len(cols) + 5) + "|"]
      for k, (p, lvl) in variants.items():
        cells = []
        for _, key in HEADS if k in metrics else []:
          v, v0 = metric(metrics[k], key), metric(metrics["FP32"], key)
          cells.append(f"{v:.4f}" if k == "FP32" else f"{v:.4f} ({100 * (v - v0) / max(abs(v0), 1e-12):+.2f} %)")
        cells += ["–"] * (len(cols) - len(cells))
        size = p.stat().st_size
        text.append(f"| {k} | " + " | ".join(cells + [f"{size / 1e6:.2f}", f"{fp32.stat().st_size / size:.2f}x",
                                                     f"{lat[k]:.2f}", f"{lat['FP32'] / lat[k]:.2f}x"]) + " |")
      text += ["", f"Adreno 630 estimate (`fair profile`, FP16 as tinygrad QCOM runs it, roofline; assumptions in "
               f"docs/benchmarks/profile.md): {adreno['optimistic']:.1f} / {adreno['nominal']:.1f} / "
               f"{adreno['pessimistic']:.1f} ms optimistic / nominal / pessimistic, FP32 and FP16 alike (the GPU path "
               "computes in FP16). INT8 has no Adreno estimate: the Adreno 630 has no fast INT8 path (INT8 is for "
               "the Hexagon DSP, docs/runtime.md).", "",
               f"Output agreement with FP32 on {len(check)} frame pairs of the bundled samples (apart from the "
               f"calibration frames); INT8 calibration: worst output cosine "
               + ", ".join(f"{m} {w:.4f}" for m, w in notes["calibration"].items()) + f" → **{notes['best']}**.", "",
               "| variant | " + " | ".join(f"{o} cos / max rel" for o in cli.OUTPUT_NAMES) + " |",
               "|---" * (len(cli.OUTPUT_NAMES) + 1) + "|"]
      for k, checks in notes["agreement"].items():
        text.append(f"| {k} | " + " | ".join(f"{c.cosine:.4f} / {c.max_rel:.1e}" for c in checks.values()) + " |")
      text += ["", "Lowest SQNR (dB) of INT8 activations against FP32, error accumulated up to the tensor "
               "(onnxruntime qdq_loss_debug, 8 frame pairs):", ""]
      for label, s in notes["sqnr"].items():
        low = sorted(s.items(), key=lambda kv: kv[1])[:6]
        text.append(f"- {label}: " + ", ".join(f"{t} {v:.1f}" for t, v in low))
      text.append("")
  write_report(a.report, "\n".join(text) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
