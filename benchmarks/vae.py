"""The autoencoder benchmarks in one place: ``memory`` (peak working memory and frames per
second of decoding 16, 64 and 256 frames, chunked and unchunked), ``quality``
(reconstruction PSNR/SSIM after at most 30 minutes of CPU training) and ``speed`` (seconds
per training step, fp32 and bf16).

Usage::

    python benchmarks/vae.py memory  [options of vae_memory.py]
    python benchmarks/vae.py quality [options of vae_quality.py]
    python benchmarks/vae.py speed   [options of vae_speed.py]

Each prints its own table; the last line is its headline. Results: docs/benchmarks.md.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

SCRIPTS = {"memory": "vae_memory.py", "quality": "vae_quality.py", "speed": "vae_speed.py"}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SCRIPTS:
        sys.exit(f"usage: python benchmarks/vae.py {{{','.join(SCRIPTS)}}} [options]; "
                 f"got {sys.argv[1:2] or 'nothing'}")
    script = Path(__file__).with_name(SCRIPTS[sys.argv[1]])
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")
