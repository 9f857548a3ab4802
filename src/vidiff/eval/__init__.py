"""Metrics and the synthetic-data judges.

- ``vidiff.eval.shapes`` reads colour, shape and direction back from MovingShapes clips
  (:func:`detect`) and scores prompt adherence (:func:`score`);
- :mod:`vidiff.eval.frechet`: Fréchet distance and polynomial-kernel MMD of feature sets;
- :mod:`vidiff.eval.features` and :mod:`vidiff.eval.distance`: FVD/KVD with a TorchScript
  I3D, or offline distances with the shipped ``vidiff-shapes`` network
  (:mod:`vidiff.eval.shapes_features`);
- :mod:`vidiff.eval.temporal`: weight-free temporal metrics;
- :mod:`vidiff.eval.study`: the steps-versus-quality study; :mod:`vidiff.eval.clip_score`:
  CLIP similarity with a local CLIP.

See ``docs/eval.md``.
"""
from vidiff.eval.distance import video_distance
from vidiff.eval.features import FeatureExtractor, load_extractor
from vidiff.eval.frechet import frechet_distance, frechet_from_features, gaussian_stats, polynomial_mmd
from vidiff.eval.shapes import CaptionError, detect, parse_caption, score
from vidiff.eval.temporal import (clip_metrics, dynamic_degree, motion_smoothness, pooled_psnr, psnr_ssim,
                                  temporal_flickering, temporal_report)

__all__ = ["detect", "score", "parse_caption", "CaptionError",
           "frechet_distance", "frechet_from_features", "gaussian_stats", "polynomial_mmd",
           "FeatureExtractor", "load_extractor", "video_distance",
           "temporal_flickering", "motion_smoothness", "dynamic_degree", "psnr_ssim", "pooled_psnr", "clip_metrics",
           "temporal_report"]
