"""Crack measurement from a binary mask: ``measure_mask`` (see cracks.py for the definitions)."""

from crackseg.measure.cracks import TYPES, Crack, measure_mask, take_joints
from crackseg.measure.joints import JOINT, JointRule, split_joints

__all__ = ["JOINT", "TYPES", "Crack", "JointRule", "measure_mask", "split_joints", "take_joints"]
