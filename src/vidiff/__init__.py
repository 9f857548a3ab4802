"""vidiff: video diffusion models in PyTorch."""
from vidiff.conditioning import Conditioning
from vidiff.video import Video

__version__ = "0.1.0"


def load(path, device=None, ema: bool = True, text_encoder_path=None):
    """Load a trained model (checkpoint or run directory) as a ``VideoPipeline``."""
    # Imported here for start-up time: ``import vidiff`` (for Video, say) should not build
    # the whole model stack.
    from vidiff.pipelines.video import load as _load
    return _load(path, device=device, ema=ema, text_encoder_path=text_encoder_path)


__all__ = ["Conditioning", "Video", "load", "__version__"]
