"""VideoVAE decoding memory: does peak working memory stay flat as the video grows?

Decodes 16, 64 and 256 frames (clips of 17, 65 and 257 frames: the first frame is coded on
its own) with an untrained ``vae-m`` (memory does not depend on training) at ``--size``
pixels square, streamed in chunks of ``--chunk`` latent frames and in one pass. Each
measurement runs in a fresh subprocess:

* the model, the latents and the uint8 output buffer ``(T, H, W, 3)`` are allocated and the
  buffer's pages touched; the resident set size (RSS) is read: the baseline;
* the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), ``decode_to_uint8`` fills
  the buffer, and the peak is read again;
* working memory = peak RSS - baseline (so neither the weights nor the output buffer count);
  measured under glibc's default malloc and with a fixed mmap threshold (see ALLOCATORS);
  frames/s = decoded frames / wall time of that one call (no warm-up: a warm-up would leave
  its working set resident and hide it from the measurement).

The last line is the headline::

    headline: chunked working memory 256/16 frames = R.RR (target <= 1.25)

Usage::

    python benchmarks/vae_memory.py                  # 128x128, chunk 4
    python benchmarks/vae_memory.py --size 64 --chunk 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

FRAMES = (16, 64, 256)


def status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def start_peak() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current resident set and return that
    resident set (KiB): the baseline :func:`working_mib` measures from."""
    baseline = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return baseline


def working_mib(baseline: int) -> float:
    """Peak RSS since :func:`start_peak` above its baseline, in MiB."""
    return (status_kib("VmHWM") - baseline) / 1024


def worker(frames: int, size: int, chunk: int | None) -> dict:
    import numpy as np
    import torch
    from vidiff.models import VAE_MODELS, VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(VAE_MODELS["vae-m"]).eval()
    C, t, h, w = vae.latent_shape(frames + 1, size, size)
    z = torch.randn(C, t, h, w)                          # one unbatched clip's latents
    out = np.empty((frames + 1, size, size, 3), dtype=np.uint8)
    out.fill(0)                                          # touch the pages: they are resident now
    baseline = start_peak()
    start = time.perf_counter()
    vae.decode_to_uint8(z, out=out, chunk=chunk)
    seconds = time.perf_counter() - start
    return {"frames": frames, "chunk": chunk, "working_mib": working_mib(baseline),
            "fps": (frames + 1) / seconds, "seconds": seconds}


# glibc raises its mmap threshold each time a large mmapped block is freed, after which freed
# activation buffers stay in the heap: RSS then measures what the allocator keeps, which
# varies by 50% from run to run. A fixed threshold returns every large buffer to the system
# on free, so RSS follows the live working set. Both are reported; the headline uses "fixed".
ALLOCATORS = {"fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "default": {}}


def measure(frames: int, size: int, chunk: int | None, allocator: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(frames), "--size", str(size),
           "--chunk", str(chunk or 0)]
    env = {**os.environ, **ALLOCATORS[allocator]}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"worker {cmd[2:]} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels")
    parser.add_argument("--chunk", type=int, default=4, help="latent frames per decoded chunk")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.size, args.chunk or None)))
        return
    import torch
    print(f"vae-m, untrained, {args.size}x{args.size}, chunk {args.chunk} latent frames; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'malloc':>8} {'frames':>6} {'mode':>9} {'working MiB':>12} {'frames/s':>9}")
    ratios = {}
    for allocator in ALLOCATORS:
        chunked = {}
        for mode, chunk in (("chunked", args.chunk), ("unchunked", None)):
            for frames in FRAMES:
                r = measure(frames, args.size, chunk, allocator)
                if chunk:
                    chunked[frames] = r["working_mib"]
                print(f"{allocator:>8} {frames:>6} {mode:>9} {r['working_mib']:>12.1f} {r['fps']:>9.2f}",
                      flush=True)
        ratios[allocator] = chunked[FRAMES[-1]] / chunked[FRAMES[0]]
    print(f"default malloc: chunked working memory {FRAMES[-1]}/{FRAMES[0]} frames = {ratios['default']:.2f}")
    print(f"headline: chunked working memory {FRAMES[-1]}/{FRAMES[0]} frames = {ratios['fixed']:.2f} "
          f"(target <= 1.25)")


if __name__ == "__main__":
    main()
