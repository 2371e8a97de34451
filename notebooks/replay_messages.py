# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A replay's `FairModelOutput` messages, as plots
#
# `fair replay` runs a segment through the `modeld_fair` daemon's own code path and writes an rlog with one
# `FairModelOutput` per frame (docs/messages.md). Here: replay a bundled sample, read the messages back with
# `cereal_ext.fair.from_events` and plot what the student published. Run from the repository root;
# `FRAMES` keeps it short.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cereal_ext.fair import from_events
from selfdrive.modeld_fair.sources import OUTPUT_SERVICE
from tools.fair.cli import main
from tools.fair.routes import Segment

SEGMENT = "data/samples/fairsim-tici-cut_in-s1--0"
FRAMES = 20
out = Path(tempfile.mkdtemp()) / "replay"
assert main(["replay", SEGMENT, "--out", str(out), "--no-video", "--max-frames", str(FRAMES), "--quiet"]) == 0

# %%
messages = from_events(Segment(out).of_type(OUTPUT_SERVICE))
print(f"{len(messages)} messages; valid: {sum(m.valid for _, m in messages)}")
t0 = messages[0][0]
times = np.array([(t - t0) / 1e9 for t, _ in messages])
last = messages[-1][1]
print("model", last.model_id, "| depth", last.depth.shape, "| segmentation", last.segmentation.shape,
      "| objects", len(last.objects), "| lane lines", len(last.lanes.lines))

# %% [markdown]
# The last frame's depth and classes, and the lane lines in the road frame:

# %%
fig, ax = plt.subplots(1, 3, figsize=(15, 3))
ax[0].imshow(np.log(np.clip(last.depth, 1, 200)), cmap="magma_r")
ax[0].set_title("depth (log m)")
ax[1].imshow(np.where(last.segmentation == 255, np.nan, last.segmentation), cmap="tab10", vmin=0, vmax=9)
ax[1].set_title("classes")
for line in last.lanes.lines:
  ax[2].plot(line.y, last.lanes.x, alpha=max(0.2, line.prob), label=f"p={line.prob:.2f}")
ax[2].set(xlabel="y (m, right)", ylabel="x (m, forward)", title="lane lines")
ax[2].legend(fontsize=7)
plt.show()

# %% [markdown]
# Per frame: the daemon's model time and the ego-motion estimate.

# %%
fig, ax = plt.subplots(1, 2, figsize=(12, 3))
ax[0].plot(times, [m.model_execution_time * 1e3 for _, m in messages], ".-")
ax[0].set(xlabel="t (s)", ylabel="ms", title="modelExecutionTime")
ax[1].plot(times, [m.ego_motion.trans[0] for _, m in messages], ".-", label="forward speed (m/s)")
ax[1].plot(times, [m.ego_motion.rot[2] for _, m in messages], ".-", label="yaw rate (rad/s)")
ax[1].set(xlabel="t (s)", title="ego motion")
ax[1].legend()
plt.show()
