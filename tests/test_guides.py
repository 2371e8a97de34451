"""The guides match the code: tools/fair/README.md has one row per `fair` verb, with cli.py's help line."""
import re
from pathlib import Path

from tools.fair.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def test_tools_readme_lists_every_verb_with_its_help_line():
  rows = re.findall(r"^\| `([\w-]+)` \| (.+?) \| `fair \1\b.*` \|$", (ROOT / "tools/fair/README.md").read_text(), re.M)
  assert dict(rows) == {name: help_text for name, (_module, help_text) in COMMANDS.items()}
