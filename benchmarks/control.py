"""ControlNet control on MovingShapes: does a video follow its maps when the prompt disagrees?

Source clips are rendered fresh from the base's four held-out triples (red triangle left, green
circle down, blue square up, white circle right), from random starts, so neither the base nor
the ControlNet saw them. Each clip's maps are extracted (silhouette or edges) and the model is
prompted with the source's colour and shape but the *opposite* direction, so the prompt pulls
the shape one way and the maps the other. Figures:

* centroid error (px on the 32 x 32 frame): mean over frames of the distance between the
  generated shape's centroid (the detector's foreground) and the control silhouette's;
  frames where the generated clip shows no shape count as missing (reported);
* silhouette IoU: the detector's foreground against the control silhouette, over all frames;
* edge control: Canny edges of the generated clip against the control edges: IoU, Canny-F1
  (edge pixels as a binary classification, the structure-fidelity score ControlNet-style video
  models report beside depth RMSE), and the F-score within 1 px (a generated edge counts when
  a control edge is at most 1 px away, and the other way round);
* silhouette IoU is the segmentation-IoU footing of the same reports;
* colour / shape kept: the detector reads the prompt's colour / shape; direction: it reads the
  source's direction (the maps'), not the prompt's;
* the same without control (the base alone on the same prompts), and with
  ``--control-range 0,0.6``; seconds per clip.

Reference images (``--reference MODEL``, a model with a reference pathway): the prompt names
only the motion, ``a moving {direction}``, with a held-out triple's direction, and the
reference is one frame of that triple's colour and shape at a random place; the detector must
read the reference's colour and shape and the prompt's direction. Beside it, the same prompts
without a reference (what the words alone give).

The last line is the headline. Usage::

    python benchmarks/control.py --clips 24 --edges ../runs/shapes-edges --reference shapes-reference --json control.json
    python benchmarks/control.py --clips 4 --steps 10                 # a smoke run
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def held_out_clips(n: int, frames: int = 16, size: int = 32, seed: int = 4321):
    """``n`` fresh clips of the held-out triples in turn: (triple, uint8 (T, H, W, 3))."""
    from vidiff.data import DEMO_HELD_OUT
    from vidiff.data.shapes import geometry, render
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        triple = tuple(DEMO_HELD_OUT[i % len(DEMO_HELD_OUT)])
        g = geometry(triple[2], frames, size)
        start = (rng.uniform(*g["x"]), rng.uniform(*g["y"]))
        out.append((triple, render(*triple, frames=frames, size=size, start=start)))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def tolerant_f(a: np.ndarray, b: np.ndarray, radius: int = 1) -> float:
    """F-score of edges ``a`` against ``b`` (bool ``(T, H, W)``) with a match radius in px."""
    from scipy import ndimage
    grow = np.ones((1, 2 * radius + 1, 2 * radius + 1), bool)
    near_b, near_a = ndimage.binary_dilation(b, grow), ndimage.binary_dilation(a, grow)
    precision = (a & near_b).sum() / max(a.sum(), 1)
    recall = (b & near_a).sum() / max(b.sum(), 1)
    return float(2 * precision * recall / max(precision + recall, 1e-9))


def measure(videos, sources, maps, triples, kind: str) -> dict:
    import torch
    from vidiff.data.control import edges
    from vidiff.eval.shapes import centroids, detect, foreground
    errors, missing, ious, edge_ious, edge_fs, color, shape, direction = [], 0, [], [], [], 0, 0, 0
    for video, source, control, triple in zip(videos, sources, maps, triples):
        gen = centroids(video)
        want = centroids(source)                   # the silhouette's centroid = the source shape's
        found = ~np.isnan(gen[:, 0])
        missing += int((~found).sum())
        if found.any():
            errors.append(float(np.linalg.norm(gen[found] - want[found], axis=1).mean()))
        ious.append(iou(foreground(video), foreground(source)))
        if kind == "edges":
            got = edges(video.to_tensor()[None])[0, 0].numpy().astype(bool)
            ref = control[0].cpu().numpy().astype(bool) if isinstance(control, torch.Tensor) else control
            edge_ious.append(iou(got, ref))
            edge_fs.append((tolerant_f(got, ref, 0), tolerant_f(got, ref, 1)))
        d = detect(video)
        color += d["color"] == triple[0]
        shape += d["shape"] == triple[1]
        direction += d["direction"] == triple[2]
    n = len(videos)
    out = {"centroid_px": float(np.mean(errors)) if errors else float("inf"),
           "frames_missing": missing / (n * len(sources[0])), "silhouette_iou": float(np.mean(ious)),
           "color_kept": color / n, "shape_kept": shape / n, "direction_of_maps": direction / n}
    if edge_ious:
        out.update(edge_iou=float(np.mean(edge_ious)), canny_f1=float(np.mean([f[0] for f in edge_fs])),
                   edge_f_1px=float(np.mean([f[1] for f in edge_fs])))
    return out


def run(pipe, controlnet, data, kind: str, steps: int, guidance: float, variants: dict) -> dict:
    from vidiff.data.shapes import caption
    from vidiff.video import Video
    prompts = [caption(c, s, OPPOSITE[d]) for (c, s, d), _ in data]
    sources = [Video(clip) for _, clip in data]
    maps = [pipe.control_maps(v, kind) for v in sources]
    triples = [t for t, _ in data]
    results = {}
    for name, options in variants.items():
        start = time.perf_counter()
        videos = []
        for i, (prompt, m) in enumerate(zip(prompts, maps)):
            control = {} if options is None else dict(control=m, controlnet=controlnet, **options)
            videos.append(pipe.generate(prompt, steps=steps, guidance=guidance, seed=i, **control))
        seconds = (time.perf_counter() - start) / len(data)
        results[name] = {**measure(videos, sources, maps, triples, kind), "seconds_per_clip": seconds}
        print(f"{kind} {name}: {json.dumps(results[name])}", flush=True)
    return results


def run_reference(model: str, data, steps: int, guidance: float) -> dict:
    """Prompts that name only the direction, with and without a reference of the subject."""
    import vidiff
    from vidiff.data.shapes import geometry, render
    from vidiff.eval.shapes import detect
    pipe = vidiff.load(model)
    rng = np.random.default_rng(99)
    results = {}
    for name, with_reference in (("no reference", False), ("reference", True)):
        start, hits = time.perf_counter(), {"color": 0, "shape": 0, "subject": 0, "direction": 0, "all": 0}
        for i, ((color, shape, direction), _) in enumerate(data):
            g = geometry("right", 2, 32)
            frame = render(color, shape, "right", frames=2, size=32,
                           start=(rng.uniform(*g["x"]), rng.uniform(*g["y"])))[0]     # (H, W, 3)
            video = pipe.generate(f"a moving {direction}", steps=steps, guidance=guidance, seed=i,
                                  reference=frame if with_reference else None)
            d = detect(video)
            right = {"color": d["color"] == color, "shape": d["shape"] == shape, "direction": d["direction"] == direction}
            for key, hit in right.items():
                hits[key] += int(hit)
            hits["subject"] += int(right["color"] and right["shape"])
            hits["all"] += int(all(right.values()))
        n = len(data)
        results[name] = {**{f"{k}_right": v / n for k, v in hits.items()},
                         "seconds_per_clip": (time.perf_counter() - start) / n}
        print(f"reference {name}: {json.dumps(results[name])}", flush=True)
    return {"model": model, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="the base (a shipped name or a directory)")
    parser.add_argument("--silhouette", default="shapes-silhouette", help="the silhouette ControlNet ('' skips it)")
    parser.add_argument("--edges", default="", help="an edges ControlNet (a shipped name or a directory)")
    parser.add_argument("--reference", default="", help="a model with a reference pathway (e.g. shapes-reference)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    import vidiff
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = vidiff.load(args.model)
    data = held_out_clips(args.clips)
    variants = {"no control": None, "control": {}, "control range 0,0.6": {"control_range": (0.0, 0.6)}}
    report = {"clips": args.clips, "steps": args.steps, "guidance": args.guidance, "model": args.model}
    start = time.perf_counter()
    for kind, name in (("silhouette", args.silhouette), ("edges", args.edges)):
        if name:
            controlnet = pipe.controlnet(name, kind)
            report[kind] = {"controlnet": name, **run(pipe, controlnet, data, kind, args.steps, args.guidance, variants)}
    if args.reference:
        report["reference"] = run_reference(args.reference, data, args.steps, args.guidance)
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    for kind in ("silhouette", "edges"):
        if kind in report:
            c = report[kind]["control"]
            extra = f", edge IoU {c['edge_iou']:.3f}, Canny-F1 {c['canny_f1']:.3f}" if "edge_iou" in c else ""
            print(f"{kind} control against the prompt's direction: centroid error {c['centroid_px']:.2f} px, "
                  f"colour kept {100 * c['color_kept']:.1f}%, maps' direction {100 * c['direction_of_maps']:.1f}%"
                  f"{extra} (no control: {report[kind]['no control']['centroid_px']:.2f} px)")
    if "reference" in report:
        r = report["reference"]["reference"]
        print(f"reference image with a direction-only prompt: colour and shape both right in "
              f"{100 * r['subject_right']:.1f}% (colour {100 * r['color_right']:.1f}%, "
              f"shape {100 * r['shape_right']:.1f}%, direction {100 * r['direction_right']:.1f}%, "
              f"all three {100 * r['all_right']:.1f}%)")


if __name__ == "__main__":
    main()
