"""Autoencoder commands: ``reconstruct`` and ``cache-latents``."""
from __future__ import annotations

from vidiff.checkpoint import read_config
from vidiff.cli.common import (dataset_type, device_type, existing_dir, existing_path, json_out, output_dir,
                               positive_int, video_out, write_json)
from vidiff.compose import autoencoder_checkpoint, autoencoder_fingerprint, load_autoencoder
from vidiff.config import apply_overrides, to_dict
from vidiff.data import DataConfig, build_dataset
from vidiff.data.latents import cache_latents
from vidiff.pipelines.autoencoder import reconstruct
from vidiff.text import TextEncoderConfig, build_text_encoder
from vidiff.video import Video

VAE_HELP = ("autoencoder checkpoint or run directory, or a latent model (its run directory or "
            "shipped name, e.g. shapes-latent) for the autoencoder it carries")


# ----------------------------------------------------------------------------- reconstruct
def add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode a video with an autoencoder; PSNR/SSIM",
                       description="Encodes and decodes VIDEO (any length and size) with a trained "
                                   "video autoencoder, chunk by chunk, writes the reconstruction "
                                   "and prints its PSNR and SSIM against the input.")
    p.add_argument("video", type=existing_path, metavar="VIDEO")
    p.add_argument("--vae", required=True, metavar="DIR", help=VAE_HELP)
    p.add_argument("--out", type=video_out, required=True, metavar="PATH",
                   help="where to write the reconstruction (.mp4, .webm, .gif; none: PNG folder)")
    p.add_argument("--chunk", type=positive_int, default=2, help="latent frames decoded at a time (default 2)")
    p.add_argument("--tile", type=positive_int, help="spatial tile side in pixels for large frames")
    p.add_argument("--json", type=json_out, metavar="PATH", help="also write the report as JSON")
    p.add_argument("--device", type=device_type)
    p.set_defaults(run=run_reconstruct)


def run_reconstruct(args) -> int:
    video = Video.load(args.video)       # a corrupt video is refused before the model loads
    vae = load_autoencoder(args.vae, device=args.device)
    rebuilt, psnr, ssim = reconstruct(vae, video, chunk=args.chunk, tile=args.tile)
    rebuilt.save(args.out)
    report = {"video": args.video, "frames": video.num_frames, "height": video.height,
              "width": video.width, "psnr_db": psnr, "ssim": ssim, "out": args.out}
    print(f"{args.video}: {video.num_frames} frames {video.width}x{video.height} -> {args.out}")
    print(f"PSNR {psnr:.2f} dB   SSIM {ssim:.4f}")
    if args.json:
        write_json(args.json, report)
    return 0


# ----------------------------------------------------------------------------- cache-latents
def add_cache_latents(sub) -> None:
    p = sub.add_parser("cache-latents", help="precompute a dataset's latents (and text) for latent training",
                       description="Encodes DATASET (shapes, digits, photopan or a video folder) "
                                   "with a trained autoencoder into safetensors shards; a latent "
                                   "denoiser then trains on CACHE (data.name=CACHE) without "
                                   "running the encoder. Data options default to the "
                                   "autoencoder's training data (frames, size) and are set as "
                                   "key=value (e.g. length=512 frames=17).")
    p.add_argument("dataset", type=dataset_type, metavar="DATASET")
    p.add_argument("--vae", required=True, metavar="DIR", help=VAE_HELP)
    p.add_argument("--out", type=output_dir, required=True, metavar="CACHE", help="cache folder to write")
    p.add_argument("--count", type=positive_int, help="clips to cache (default: all of a finite dataset)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--shard-size", type=positive_int, default=256, help="clips per shard (default 256)")
    p.add_argument("--text-kind", choices=["builtin", "clip", "t5"], default="builtin",
                   help="builtin: cache token ids; clip/t5: cache the frozen encoder's embeddings")
    p.add_argument("--text-path", type=existing_dir, metavar="DIR",
                   help="local CLIP/T5 directory for --text-kind clip/t5")
    p.add_argument("--device", type=device_type)
    p.add_argument("overrides", nargs="*", help="data options as key=value")
    p.set_defaults(run=run_cache_latents)


def run_cache_latents(args) -> int:
    checkpoint = autoencoder_checkpoint(args.vae)      # found (and a shipped model verified) once
    vae = load_autoencoder(checkpoint, device=args.device)
    trained_on = read_config(checkpoint, kind="autoencoder").get("run", {}).get("data", {})
    data = {"name": args.dataset, "frames": trained_on.get("frames", 17), "size": trained_on.get("size", 32)}
    apply_overrides(data, [o[len("data."):] if o.startswith("data.") else o for o in args.overrides])
    config = DataConfig.from_dict(data)
    vae.latent_shape(config.frames, config.size, config.size)      # a clip size it can code
    text_encoder = None
    if args.text_kind != "builtin":
        if not args.text_path:
            raise ValueError(f"--text-kind {args.text_kind} needs --text-path DIR (a local model directory)")
        text_encoder = build_text_encoder(TextEncoderConfig(kind=args.text_kind, path=args.text_path))
    out = cache_latents(vae, autoencoder_fingerprint(checkpoint), build_dataset(config), args.out,
                        count=args.count, batch_size=args.batch_size, shard_size=args.shard_size,
                        text_encoder=text_encoder, source=to_dict(config), progress=True)
    print(f"wrote a latent cache in {out}: train on it with data.name={out} model.vae={args.vae} "
          f"data.frames={config.frames} data.size={config.size}")
    return 0
