"""vidiff: video diffusion models in PyTorch."""
from vidiff.conditioning import Conditioning
from vidiff.video import Video

__version__ = "0.1.0"
__all__ = ["Conditioning", "Video", "__version__"]
