"""vidiff: video diffusion models in PyTorch."""
from vidiff.conditioning import Conditioning
try:  # written next; keeps the package importable meanwhile
    from vidiff.video import Video
except ImportError:  # pragma: no cover
    Video = None

__version__ = "0.1.0"
__all__ = ["Conditioning", "Video", "__version__"]
