"""Large frames: decoding 17 frames at 512x512 with spatial tiles. Working memory, and seams.

Memory: each measurement runs in a fresh subprocess (as in ``vae_memory.py``, whose
``start_peak`` / ``working_mib`` and fixed-mmap-threshold allocator it shares): the latents
and the uint8 output buffer are allocated and touched, the peak-RSS mark is reset,
``decode_to_uint8`` fills the buffer, and working memory = peak RSS - baseline. Tiled (``--tile`` latent cells, overlap
``tile // 4``, ``--chunk`` latent frames a pass) against one untiled pass.

Seams: a held-out clip of ``--dataset`` at ``--size`` is encoded once (tiled, chunked) and its
latents decoded tiled and untiled by the trained autoencoder ``--vae``. Reported: PSNR of each
against the source, PSNR of tiled against untiled, and the seam ratio: the mean absolute
step between neighbouring pixels across every tile-overlap row and column of the tiled decode,
divided by the same in the untiled decode (1.0: the tile borders are no steeper than the image
is there; a visible seam is a step of its own, > 1). ``--look PNG`` writes frame 8 of the
tiled decode beside its difference from the untiled one (amplified 8x).

The last line is the headline::

    headline: 512x512 x 17 frames tiled: W MiB working memory (bound B), seam ratio R, tiled vs untiled P dB

Usage::

    python benchmarks/vae_tiles.py --vae runs/bench-vae/photopan
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_memory import ALLOCATORS, start_peak, working_mib  # noqa: E402  (benchmarks are scripts, not a package)

BOUND_MIB = 1024   # the stated bound on tiled working memory at 512x512, 17 frames


def load(vae_dir: str):
    import torch
    from vidiff.compose import load_autoencoder
    from vidiff.models import VAE_MODELS, VideoVAE

    if vae_dir:
        return load_autoencoder(vae_dir)
    torch.manual_seed(0)
    return VideoVAE(VAE_MODELS["vae-s"]).eval()          # memory does not depend on training


def worker(args) -> dict:
    import numpy as np
    import torch

    vae = load(args.vae)
    C, t, h, w = vae.latent_shape(args.frames, args.size, args.size)
    z = torch.randn(C, t, h, w, generator=torch.Generator().manual_seed(0))
    out = np.zeros((args.frames, args.size, args.size, 3), dtype=np.uint8)
    out.fill(0)                                          # touch the pages: they are resident now
    baseline = start_peak()
    start = time.perf_counter()
    vae.decode_to_uint8(z, out=out, chunk=args.chunk, tile=args.tile or None)
    seconds = time.perf_counter() - start
    return {"working_mib": working_mib(baseline), "seconds": seconds}


def measure(args, tile: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--vae", args.vae or "", "--size", str(args.size),
           "--frames", str(args.frames), "--chunk", str(args.chunk), "--tile", str(tile)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ALLOCATORS["fixed"]})
    if result.returncode:
        raise RuntimeError(f"worker failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def seams(args) -> dict:
    import numpy as np
    import torch
    from vidiff.data import build_dataset
    from vidiff.diffusion.tiled import tile_starts
    from vidiff.eval.temporal import psnr_ssim
    from vidiff.video import Video

    vae = load(args.vae)
    source = Video.from_tensor(build_dataset({"name": args.dataset, "frames": args.frames, "size": args.size,
                                              "seed": 10_000})[0]["video"]).frames     # (T, H, W, 3)
    with torch.no_grad():
        z = vae.encode_chunked(torch.from_numpy(source), chunk=args.chunk, tile=args.tile).mean[0]
        tiled = vae.decode_to_uint8(z, chunk=args.chunk, tile=args.tile).astype(np.float64)
        whole = vae.decode_to_uint8(z, chunk=args.chunk).astype(np.float64)
    sf, overlap = vae.spatial_factor, args.tile // 4
    starts = tile_starts(z.shape[-1], args.tile, overlap)[1:]      # square: the same rows and columns
    lines = sorted({(s + k) * sf for s in starts for k in range(overlap + 1)})

    def steps(x):   # mean |neighbour step| across the overlap lines, both axes
        across_cols = np.abs(x[:, :, lines] - x[:, :, [c - 1 for c in lines]]).mean()
        across_rows = np.abs(x[:, lines] - x[:, [r - 1 for r in lines]]).mean()
        return (across_cols + across_rows) / 2

    mean_psnr = lambda a, b: float(np.mean(psnr_ssim(a.astype(np.uint8), b.astype(np.uint8))["psnr"]))
    if args.look:
        from PIL import Image
        frame = min(8, args.frames - 1)
        diff = np.clip(np.abs(tiled[frame] - whole[frame]) * 8, 0, 255)
        Image.fromarray(np.concatenate([tiled[frame], diff], 1).astype(np.uint8)).save(args.look)
    return {"tiled_vs_source": mean_psnr(tiled, source), "untiled_vs_source": mean_psnr(whole, source),
            "tiled_vs_untiled": mean_psnr(tiled, whole), "seam_ratio": steps(tiled) / steps(whole)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", default="", help="trained autoencoder (run or checkpoint); needed for seams")
    p.add_argument("--dataset", default="photopan", help="held-out clip for the seam measurement")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--chunk", type=int, default=1, help="latent frames a decoding pass")
    p.add_argument("--tile", type=int, default=32, help="latent cells a tile side (0: untiled)")
    p.add_argument("--look", metavar="PNG", help="write a tiled frame and its difference from untiled")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import torch
    print(f"{args.size}x{args.size}, {args.frames} frames, chunk {args.chunk}, tile {args.tile} latent cells; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    tiled, whole = measure(args, args.tile), measure(args, 0)
    print(f"working memory: tiled {tiled['working_mib']:.0f} MiB ({tiled['seconds']:.1f} s), "
          f"untiled {whole['working_mib']:.0f} MiB ({whole['seconds']:.1f} s)")
    s = seams(args) if args.vae else None
    if s:
        print("PSNR: tiled vs source {tiled_vs_source:.2f} dB, untiled vs source {untiled_vs_source:.2f} dB, "
              "tiled vs untiled {tiled_vs_untiled:.2f} dB; seam ratio {seam_ratio:.3f}".format(**s))
    print(f"headline: {args.size}x{args.size} x {args.frames} frames tiled: {tiled['working_mib']:.0f} MiB working "
          f"memory (bound {BOUND_MIB})" + (f", seam ratio {s['seam_ratio']:.3f}, tiled vs untiled "
                                           f"{s['tiled_vs_untiled']:.2f} dB" if s else ""))


if __name__ == "__main__":
    main()
