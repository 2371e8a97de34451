"""Training data for the student: a frame cache of model-frame inputs and ground truth, targets in the
batch contract (docs/data.md), label-consistent augmentation, hard-example mining and dataset statistics.

  build_frame_cache(segments, out_dir, ...) / FrameCache(out_dir)     cache.py
  StudentDataset(cache, ...) / build(config, split)                    dataset.py
  Augment / AugmentConfig                                              augment.py
  HardExampleSampler                                                   mining.py
  `fair stats CACHE --out DIR`                                         stats.py
"""
