"""Progress of long loops: a tqdm bar on a terminal, a plain line every few seconds anywhere else.

Log files and CI get lines such as `fair label: 120/400 frame [00:10<00:23, 12.0frame/s, loss=0.41]` instead of ten
carriage-return updates a second. `fair --quiet` turns every bar off (set_quiet).
"""
from __future__ import annotations

import sys

from tqdm import tqdm

LINE_INTERVAL_S = 5.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_quiet = False


def set_quiet(quiet: bool) -> None:
  """Disable (True) or allow every progress bar of this process."""
  global _quiet
  _quiet = quiet


class LineProgress(tqdm):
  """tqdm writing each update as a line of its own: no carriage returns, no bar, no cursor moves."""
  def display(self, msg=None, pos=None) -> bool:
    if msg == "":   # tqdm clearing its line: nothing to clear
      return False
    self.fp.write((self.__str__() if msg is None else msg) + "\n")
    self.fp.flush()
    self.shown = self.n
    return True

  def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
    super().set_postfix(ordered_dict, False, **kwargs)   # shown with the next line, not as a line of its own

  def set_postfix_str(self, s="", refresh=True) -> None:
    super().set_postfix_str(s, False)

  def close(self) -> None:
    if not self.disable and getattr(self, "shown", None) != self.n:
      self.display()   # the final count, once
    self.leave = False
    super().close()


def progress_bar(iterable=None, **kwargs) -> tqdm:
  """tqdm(iterable, **kwargs) on a terminal, LineProgress (a line per LINE_INTERVAL_S) when the output is not one;
  disabled by set_quiet(True)."""
  kwargs["disable"] = kwargs.get("disable", False) or _quiet
  fp = kwargs.get("file") or sys.stderr
  if hasattr(fp, "isatty") and fp.isatty():
    return tqdm(iterable, **kwargs)
  kwargs.pop("dynamic_ncols", None)
  return LineProgress(iterable, **{"mininterval": LINE_INTERVAL_S, "bar_format": LINE_FORMAT, **kwargs})
