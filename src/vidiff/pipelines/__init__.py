"""Pipelines: a trained model's tasks behind one object."""
from vidiff.pipelines.cascade import Cascade, Stage
from vidiff.pipelines.video import VideoPipeline, load

__all__ = ["VideoPipeline", "load", "Cascade", "Stage"]
