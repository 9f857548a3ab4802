"""Metrics and the synthetic-data judges.

``vidiff.eval.shapes`` reads colour, shape and direction back from MovingShapes clips
(:func:`detect`) and scores prompt adherence (:func:`score`).
"""
from vidiff.eval.shapes import CaptionError, detect, parse_caption, score

__all__ = ["detect", "score", "parse_caption", "CaptionError"]
