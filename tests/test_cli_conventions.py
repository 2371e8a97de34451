"""What every `fair` command shares: line progress off a terminal, --quiet, --version, env, --device, examples."""
import io
import re
from importlib.metadata import version

import pytest
import torch

from tools.fair import progress as progress_mod
from tools.fair.cli import COMMANDS, main
from tools.fair.device import resolve_device
from tools.fair.progress import LineProgress, progress_bar

LINE = re.compile(r"^load: (\d+)/4 frame \[\d\d:\d\d<(\d\d:\d\d|\?), [\d.?]+frame/s(, loss=\d\.\d\d)?\]$")


class Tty(io.StringIO):
  def isatty(self):
    return True


def test_progress_off_a_terminal_is_plain_lines_with_steps_rate_and_eta():
  out = io.StringIO()
  bar = progress_bar(total=4, desc="load", unit="frame", file=out, mininterval=0)
  for i in range(4):
    bar.update()
    bar.set_postfix(loss=f"{i:.2f}")   # shown with the next line, not a line of its own
  bar.close()
  text = out.getvalue()
  assert "\r" not in text and "\x1b" not in text
  lines = text.splitlines()
  assert [int(LINE.match(line).group(1)) for line in lines] == [0, 1, 2, 3, 4]
  assert lines[-1].endswith(", loss=2.00]") and "loss" not in lines[1]


def test_progress_lines_are_seconds_apart_by_default():
  out = io.StringIO()
  for _ in progress_bar(range(1000), desc="load", unit="frame", file=out):
    pass
  assert progress_mod.LINE_INTERVAL_S >= 1
  assert len(out.getvalue().splitlines()) == 2   # the start and the final count, nothing in between


def test_progress_on_a_terminal_is_tqdm_and_quiet_silences_both(monkeypatch):
  assert not isinstance(progress_bar(range(2), file=Tty(), disable=True), LineProgress)
  monkeypatch.setattr(progress_mod, "_quiet", True)
  for fp in (io.StringIO(), Tty()):
    for _ in progress_bar(range(3), desc="x", file=fp, mininterval=0):
      pass
    assert fp.getvalue() == ""


def test_quiet_is_a_flag_of_every_command(capsys):
  for name in COMMANDS:
    with pytest.raises(SystemExit) as e:
      main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "-q, --quiet" in text, name
    assert re.search(r"\nexamples:\n  (fair|python -m) \S", text), f"fair {name} --help has no examples"


def test_torch_commands_default_to_device_auto(capsys):
  for name in ("label", "train", "flow-train", "lanes"):
    with pytest.raises(SystemExit):
      main([name, "--help"])
    assert re.search(r"--device DEVICE\s+auto \(default: cuda, then mps, then cpu\)", capsys.readouterr().out), name


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    main(["--version"])
  assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fair {version('fairpilot')}"


def test_env_reports_versions_devices_and_where_weights_are_looked_for(tmp_path, capsys):
  (tmp_path / "detr").mkdir()
  assert main(["env", "--weights", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert f"torch: {torch.__version__}" in out and f"transformers: {version('transformers')}" in out
  assert f"tinygrad: {version('tinygrad')}" in out and f"onnxruntime: {version('onnxruntime')}" in out
  assert f"--device auto: {resolve_device('auto')}" in out
  assert f"detr: {tmp_path / 'detr'} [found]" in out and f"dinov2: {tmp_path / 'dinov2'} [missing]" in out


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
  monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
  monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
  assert resolve_device("auto") == torch.device("cpu")
  monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
  assert resolve_device("auto") == torch.device("mps")
  monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
  assert resolve_device("auto") == torch.device("cuda")
  assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, message", [("cuda", "no CUDA device available"), ("mps", "no MPS device available"),
                                           ("gpu0", "not a device"), ("meta", "not supported")])
def test_an_unavailable_device_is_a_one_line_error(monkeypatch, name, message):
  monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
  monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
  with pytest.raises(ValueError, match=message) as e:
    resolve_device(name)
  assert "\n" not in str(e.value)


def test_train_on_a_missing_device_exits_2_in_one_line(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
  assert main(["train", "tools/fair/distill/recipes/nano_gt.toml", "--out", str(tmp_path), "--device", "cuda"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("fair train: error: --device cuda: no CUDA device available") and err.count("\n") == 1


def test_every_teacher_without_weights_is_named_in_one_error(tmp_path, capsys):
  assert main(["label", str(tmp_path / "seg"), "--teachers", "dinov2,detr,dpt-depth", "--weights", str(tmp_path),
               "--out", str(tmp_path / "store"), "--device", "cpu"]) == 2
  err = capsys.readouterr().err
  assert err.count("error:") == 1 and "3 teacher(s) lack weights (dinov2, detr, dpt-depth)" in err
  for name in ("dinov2", "detr", "dpt-depth"):
    assert f"at {tmp_path / name}" in err
