"""vidiff: video diffusion models in PyTorch."""
from vidiff.conditioning import Conditioning
from vidiff.video import Video

__version__ = "0.1.0"


def load(model=None, device=None, ema: bool = True, text_encoder_path=None, reference_encoder_path=None):
    """A trained model as a ``VideoPipeline``: a shipped model's name (default ``"shapes"``;
    ``vidiff models --pretrained`` lists them) or a checkpoint or run directory. A path that
    exists wins over a name. ``text_encoder_path`` / ``reference_encoder_path`` re-point a
    frozen CLIP/T5 text encoder / CLIP vision reference encoder whose folder has moved."""
    # Imported here for start-up time: ``import vidiff`` (for Video, say) should not build
    # the whole model stack.
    from vidiff.pipelines.video import load as _load
    return _load(model, device=device, ema=ema, text_encoder_path=text_encoder_path,
                 reference_encoder_path=reference_encoder_path)


def __getattr__(name: str):
    # ``vidiff.Cascade`` (base -> interpolation -> super-resolution stages), imported on first
    # use for the same start-up reason as ``load``.
    if name == "Cascade":
        from vidiff.pipelines.cascade import Cascade
        return Cascade
    raise AttributeError(f"module 'vidiff' has no attribute {name!r}")


__all__ = ["Conditioning", "Video", "Cascade", "load", "__version__"]
