"""Where teacher weights come from, and which weights a label was made with.

A weights DIR holds one sub-folder per teacher name (DIR/dinov2/, DIR/dpt-depth/, DIR/detr/, ...), each a
Hugging Face save_pretrained folder (config.json + model.safetensors) exactly as downloaded from the
official repository. The DIR is the `weights_dir` argument, else the FAIR_WEIGHTS_DIR environment variable;
with neither (or with weights_dir="hf-cache") the offline Hugging Face cache is used, looked up by official
model id. Nothing is ever downloaded: labels must be reproducible from weights on disk, so each teacher
records the sha256 of its folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import SafetensorError

WEIGHTS_ENV = "FAIR_WEIGHTS_DIR"
HF_CACHE = "hf-cache"   # weights_dir value that selects the Hugging Face cache even when FAIR_WEIGHTS_DIR is set


class MissingWeightsError(FileNotFoundError):
  """No weights where a teacher looked; the message names the official ids and the exact path expected."""


@dataclass(frozen=True)
class WeightsInfo:
  """Resolved weights of one teacher."""
  teacher: str
  path: Path             # the save_pretrained folder
  model_id: str | None   # official id when found in the Hugging Face cache, None for a weights DIR
  sha256: str            # weights_hash(path)


def weights_hash(path: str | Path) -> str:
  """sha256 over the folder's files in sorted relative-path order: each file's path, size and bytes.

  Hidden files and folders are skipped: `hf download --local-dir` keeps download metadata with
  timestamps under .cache/, which would make identical weights hash differently.
  """
  root = Path(path)
  files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
    part.startswith(".") for part in p.relative_to(root).parts))
  h = hashlib.sha256()
  for p in files:
    rel = p.relative_to(root).as_posix().encode()
    h.update(len(rel).to_bytes(8, "little") + rel + p.stat().st_size.to_bytes(8, "little"))
    with open(p, "rb") as f:
      while chunk := f.read(1 << 20):
        h.update(chunk)
  return h.hexdigest()


def _ids_text(hf_ids: tuple[str, ...], revision: str) -> str:
  rev = "" if revision == "main" else f" (revision {revision!r})"
  return ", ".join(f"{i} (https://huggingface.co/{i})" for i in hf_ids) + rev


def _download_cmd(hf_id: str, revision: str, local_dir: Path | None) -> str:
  rev = "" if revision == "main" else f" --revision {revision}"
  return f"hf download {hf_id}{rev}" + (f" --local-dir {local_dir}" if local_dir else "")


def _from_dir(teacher: str, path: Path, hf_ids: tuple[str, ...], revision: str) -> WeightsInfo:
  if not (path / "config.json").is_file():
    raise MissingWeightsError(
      f"no weights for teacher {teacher!r}: expected a Hugging Face save_pretrained folder (config.json + "
      f"model.safetensors) at {path}\n  official weights: {_ids_text(hf_ids, revision)}\n"
      f"  fetch with: {_download_cmd(hf_ids[0], revision, path)}")
  return WeightsInfo(teacher, path, None, weights_hash(path))


def _from_cache(teacher: str, hf_id: str, hf_ids: tuple[str, ...], revision: str) -> WeightsInfo:
  try:
    path = Path(snapshot_download(hf_id, revision=revision, local_files_only=True))
  except LocalEntryNotFoundError:
    expected = Path(constants.HF_HUB_CACHE) / f"models--{hf_id.replace('/', '--')}"
    raise MissingWeightsError(
      f"no weights for teacher {teacher!r}: {hf_id} (revision {revision!r}) is not in the offline Hugging Face "
      f"cache; expected a snapshot under {expected}\n  official weights: {_ids_text(hf_ids, revision)}\n"
      f"  fetch with: {_download_cmd(hf_id, revision, None)}, or pass --weights DIR (or set {WEIGHTS_ENV}) "
      f"with the folder at DIR/{teacher}/") from None
  return WeightsInfo(teacher, path, hf_id, weights_hash(path))


def resolve_weights(teacher: str, hf_ids: tuple[str, ...], weights_dir: str | Path | None = None,
                    model_id: str | None = None, revision: str = "main") -> WeightsInfo:
  """Find a teacher's weights: `weights_dir`/<teacher>, else $FAIR_WEIGHTS_DIR/<teacher>, else the offline
  Hugging Face cache (`model_id`, default hf_ids[0], at `revision`). MissingWeightsError when absent."""
  if weights_dir is None:
    weights_dir = os.environ.get(WEIGHTS_ENV) or HF_CACHE
  if str(weights_dir) == HF_CACHE:
    return _from_cache(teacher, model_id or hf_ids[0], hf_ids, revision)
  return _from_dir(teacher, Path(weights_dir) / teacher, hf_ids, revision)


def read_config(weights: WeightsInfo) -> dict:
  """The folder's config.json; ValueError naming the file when it is not a JSON object (a damaged download)."""
  path = weights.path / "config.json"
  try:
    config = json.loads(path.read_bytes())
  except (ValueError, RecursionError) as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:120]}); fetch the weights again") from None
  if not isinstance(config, dict):
    raise ValueError(f"{path}: not a JSON object; fetch the weights again")
  return config


def check_model_type(weights: WeightsInfo, model_type: str) -> None:
  """ValueError unless the folder's config.json is of `model_type` (e.g. a DINOv2 checkpoint in DIR/dpt-depth/)."""
  found = read_config(weights).get("model_type")
  if found != model_type:
    raise ValueError(f"{weights.path} holds a {found!r} checkpoint; teacher {weights.teacher!r} needs {model_type!r}")


def load_pretrained(model_class, weights: WeightsInfo, model_type: str, device: str | torch.device,
                    dtype: torch.dtype):
  """`model_class.from_pretrained` on a resolved folder, in eval mode on `device`.

  Refuses checkpoints of another model type and checkpoints that lack some of the class's weights:
  from_pretrained would fill those randomly and the teacher would label noise without a word.
  """
  check_model_type(weights, model_type)
  try:
    model, info = model_class.from_pretrained(weights.path, dtype=dtype, output_loading_info=True)
  except (SafetensorError, OSError, EOFError) as e:   # a truncated or damaged model.safetensors
    files = ", ".join(p.name for p in sorted(weights.path.glob("*.safetensors"))) or "no *.safetensors"
    raise ValueError(f"{weights.path} ({files}): unreadable weights ({type(e).__name__}: {str(e)[:160]}); "
                     "a truncated or damaged download: fetch the weights again") from None
  if info["missing_keys"]:
    missing = sorted(info["missing_keys"])
    raise ValueError(f"{weights.path} lacks {len(missing)} weights of {model_class.__name__} (e.g. {missing[:3]}): "
                     f"not a checkpoint of this model class")
  return model.to(device).eval()
