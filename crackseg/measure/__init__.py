"""Crack measurement from a binary mask: ``measure_mask`` (see cracks.py for the definitions)."""

from crackseg.measure.cracks import TYPES, Crack, measure_mask

__all__ = ["TYPES", "Crack", "measure_mask"]
