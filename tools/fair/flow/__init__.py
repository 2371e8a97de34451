"""Unsupervised optical flow in the UnSAMFlow recipe (docs/flow.md): a PWC-style network (model.py), the
photometric / smoothness / segment-homography losses (losses.py), `fair flow-train` (train.py) and ego-motion and
object velocity from flow + depth (motion.py). The trained folder DIR/flow/ is what teachers.flow.FlowTeacher loads.
"""
