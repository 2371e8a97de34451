"""`fair label`: teachers' pseudo-labels for segments, in a sharded, resumable, verifiable store (docs/labels.md).

  LabelStore(root).read(teacher, segment)   numpy arrays of every labelled frame (store.py)
  label_segments(...)                       decode -> warp -> teachers -> shards, resumable (pipeline.py)
"""
from tools.fair.labels.store import CorruptShardError, Labels, LabelStore, ShardEntry, ShardInfo, convert

__all__ = ["CorruptShardError", "Labels", "LabelStore", "ShardEntry", "ShardInfo", "convert"]
