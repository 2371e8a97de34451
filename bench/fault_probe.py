#!/usr/bin/env python3
"""The fault probe: runs the fault suite (tests/faults, marker `faults`) and tabulates, per fault class, how
many faults were tried and how many were handled (their test passed: the daemon kept running and flagged
valid=False, or the tool refused in one line with exit 2, lost nothing and resumed exactly).

Each test case of the suite injects one fault; FAULT_CLASSES maps a case to its class by its test's name.
A failing or erroring case counts as tried, not handled; a case no class claims is reported as "other".

  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/fault_probe.py [--out docs/benchmarks/faults.md]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/fault_probe.py"
# (class, pattern over "file::test[params]"), first match wins
FAULT_CLASSES = [
  ("daemon: calibration NaN / inf / first bad / uncomparable", r"bad_calibration|bad_first_calibration|warp_cache"),
  ("daemon: future / backwards / out-of-range stamps", r"bad_stamp|out_of_range_metadata"),
  ("daemon: malformed transport messages (hypothesis)", r"malformed_frame_messages|corrupted_event|lone_surrogate"),
  ("daemon: message floods", r"flood"),
  ("daemon: live process through every class", r"live_daemon"),
  ("tools: segment without calibration (one policy)", r"test_tools_calibration"),
  ("tools: duplicate segment names", r"two_segments|without_segment_ids|content_id"),
  ("tools: truncated / destroyed rlogs and videos", r"truncated_video|replaying_no_frames"),
  ("tools: hostile or broken manifests", r"manifest_paths|manifest_entry"),
  ("release: hostile, truncated, nested bundles", r"test_release_faults"),
  ("tools: kill -9 during writes (label, cache, train, replay)", r"killed|kill_between|every_checkpoint_corrupt"),
  ("tools: disk full (ulimit -f, ENOSPC)", r"full_disk|failed_rlog_write"),
  ("tools: leftovers of killed writers", r"stale_leftovers"),
  ("tools: damaged weights, bad scale / device / out / resume", r"damaged_teacher|scale_that|out_that|another_recipe|device_cuda"),
  ("tools: bad hyper-parameters and losses", r"non_finite|max_frames"),
]


def classify(case: str) -> str:
  return next((name for name, pattern in FAULT_CLASSES if re.search(pattern, case)), "other")


def run_suite() -> list[tuple[str, bool]]:
  """(case id, handled) for every case of the fault suite."""
  with tempfile.TemporaryDirectory() as tmp:
    xml = Path(tmp) / "faults.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "faults", "tests/faults",
                    f"--junitxml={xml}"], cwd=ROOT, check=False)
    cases = []
    for tc in ET.parse(xml).getroot().iter("testcase"):
      if tc.find("skipped") is not None:
        continue
      file = tc.get("classname", "").rsplit(".", 1)[-1]
      cases.append((f"{file}::{tc.get('name')}", tc.find("failure") is None and tc.find("error") is None))
  return cases


def report(cases: list[tuple[str, bool]]) -> str:
  tried, handled = Counter(), Counter()
  for case, ok in cases:
    tried[classify(case)] += 1
    handled[classify(case)] += ok
  order = [name for name, _ in FAULT_CLASSES] + ["other"]
  rows = [f"| {name} | {tried[name]} | {handled[name]} |" for name in order if tried[name]]
  failed = [case for case, ok in cases if not ok]
  text = header("Fault probe: tried / handled per fault class", COMMAND)
  text += ("\nOne case = one injected fault of tests/faults (each asserts the rule of docs/faults.md: the daemon "
           "keeps running and flags valid=False; a tool refuses in one line with exit 2, loses nothing and "
           "resumes exactly). Hypothesis cases count once each, though each tries many generated inputs.\n\n"
           "| fault class | tried | handled |\n|---|---:|---:|\n" + "\n".join(rows) +
           f"\n| **all** | **{len(cases)}** | **{len(cases) - len(failed)}** |\n")
  if failed:
    text += "\nNot handled:\n" + "".join(f"- `{c}`\n" for c in failed)
  return text


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/faults.md")
  args = ap.parse_args()
  cases = run_suite()
  write_report(args.out, report(cases))
  return 0 if all(ok for _, ok in cases) else 1


if __name__ == "__main__":
  sys.exit(main())
