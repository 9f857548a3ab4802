"""Reference images through a frozen CLIP vision model from a local directory.

The second source of a network's reference tokens (``reference_encoder: clip``; the first is the
small :class:`~vidiff.models.condition.ReferenceEncoder` trained with the network):

* :class:`CLIPImageEncoder` wraps a frozen ``CLIPVisionModelWithProjection`` (or
  ``CLIPVisionModel``) loaded with ``transformers`` from the folder ``save_pretrained`` wrote,
  and turns a reference ``(B, 3, H, W)`` in ``[-1, 1]`` into one feature vector per image:
  its image embedding (projected when the folder has the projection) and the mean of its last
  hidden state's patch tokens. Both are position-free, as the built-in encoder's pooling is:
  the reference says what the subject looks like, not where it is. The image is prepared in
  torch: resized to the model's ``image_size`` (bicubic, antialiased, the whole image without
  a crop, so a subject near the border stays in) and normalised with the mean and standard
  deviation of the folder's ``preprocessor_config.json`` (CLIP's own without one).
* :class:`CLIPReferenceEncoder` puts a trainable projection after it: ``K`` cross-attention
  tokens of the network's context width and a vector for the per-sample embedding, whose
  last layer starts at zero as the built-in encoder's does. Only the projection is stored in
  a checkpoint; the CLIP model is recorded by its folder (the network config's
  ``reference_encoder_path``), which ``load_denoiser(reference_encoder_path=...)`` re-points.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.models.pretrained import (
    FrozenModel, check_dtype, has_projection, import_transformers, load_frozen, loading_errors,
    read_model_directory,
)

# The mean and standard deviation CLIP was trained with (its image processor's defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_normalisation(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of the image processor saved beside a vision model: the
    ``preprocessor_config.json`` in ``path`` or in a diffusers-style sibling
    ``feature_extractor/``; CLIP's own values when there is none."""
    for folder in (path, path.parent / "feature_extractor"):
        file = folder / "preprocessor_config.json"
        if file.is_file():
            config = json.loads(file.read_text())
            if config.get("do_normalize") is False:
                return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
            mean, std = config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD)
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ValueError(f"{str(file)!r}: image_mean and image_std must hold 3 values each, "
                                 f"the std > 0; got {mean} and {std}")
            return tuple(map(float, mean)), tuple(map(float, std))
    return CLIP_MEAN, CLIP_STD


class CLIPImageEncoder(FrozenModel):
    """A frozen CLIP vision tower from the local folder ``path``:
    ``image (B, 3, H, W) in [-1, 1] -> features (B, pooled_dim + hidden)`` float32.

    ``path`` holds a ``CLIPVisionModelWithProjection`` or ``CLIPVisionModel`` (or a full
    ``CLIPModel``, whose vision tower alone is loaded), as ``save_pretrained`` writes it.
    ``dtype`` is the parameter dtype (``float32``, ``float16``, ``bfloat16``).

    Attributes:
        image_size: the side the image is resized to (the model's ``image_size``).
        pooled_dim: width of the image embedding (``projection_dim`` with a projection, else
            the hidden width).
        features: width of the output: the image embedding, then the patch-token mean.
    """

    model_types = ("clip", "clip_vision_model")

    def __init__(self, path, dtype: str = "float32"):
        super().__init__()
        check_dtype(dtype)
        path = Path(path).expanduser().resolve()
        config = read_model_directory(path, "CLIP vision model", self.model_types,
                                      "model.overrides.reference_encoder_path")
        mean, std = image_normalisation(path)
        transformers = import_transformers("CLIP vision reference encoders")
        self.has_projection = has_projection(path, config, "CLIPVisionModelWithProjection",
                                             "visual_projection.weight")
        cls = transformers.CLIPVisionModelWithProjection if self.has_projection else transformers.CLIPVisionModel
        # A full CLIP folder keeps the projection's width at its top level, not in vision_config.
        overrides = {"projection_dim": config["projection_dim"]} \
            if config["model_type"] == "clip" and "projection_dim" in config else {}
        with loading_errors("CLIP vision model", path):
            self.model = load_frozen(cls, path, dtype, **overrides)
        self.path = str(path)
        vision = self.model.config
        self.image_size = int(vision.image_size)
        self.pooled_dim = int(vision.projection_dim if self.has_projection else vision.hidden_size)
        self.features = self.pooled_dim + int(vision.hidden_size)
        # Not persistent: they come from the folder, like the weights, never from a checkpoint.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._last: Optional[tuple[Tensor, Tensor]] = None

    def preprocess(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[-1, 1]`` -> the model's ``pixel_values (B, 3, S, S)`` float32:
        the whole image resized to ``S = image_size`` (bicubic, antialiased, clamped to
        ``[0, 1]`` as an 8-bit image would be), then normalised by the processor's mean and std."""
        x = (image.float() + 1) / 2                                                  # (B, 3, H, W) in [0, 1]
        S = self.image_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std                                            # (B, 3, S, S)

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        # image: (B, 3, H, W) in [-1, 1] -> (B, features) float32
        pixels = self.preprocess(image)                                              # (B, 3, S, S)
        # Sampling passes the same reference at every step (and guidance twice per step): a
        # frozen model's features for the pixels it saw last are reused instead of recomputed.
        last = self._last
        if last is not None and last[0].shape == pixels.shape and last[0].device == pixels.device \
                and torch.equal(last[0], pixels):
            return last[1]
        out = self.model(pixel_values=pixels.to(self.model.dtype))
        pooled = out.image_embeds if self.has_projection else out.pooler_output      # (B, pooled_dim)
        patches = out.last_hidden_state[:, 1:].mean(1)                               # (B, hidden): no class token
        features = torch.cat([pooled, patches], 1).float()                           # (B, features)
        self._last = (pixels, features)
        return features


class CLIPReferenceEncoder(nn.Module):
    """A reference image ``(B, 3, H, W)`` in ``[-1, 1]`` -> ``tokens (B, K, dim)`` for
    cross-attention and ``vector (B, emb_dim)`` for the per-sample embedding, through a frozen
    :class:`CLIPImageEncoder` and a trainable projection (layer norm, then one MLP per output;
    the vector's last layer is zeroed by the network's initialisation, as the built-in
    encoder's is).

    Args:
        path: the CLIP vision model's local folder.
        dim: the network's cross-attention width.
        tokens: ``K``, the tokens per reference.
        emb_dim: the network's embedding width.
        dtype: the CLIP model's parameter dtype (the projection stays float32).
    """

    def __init__(self, path, dim: int, tokens: int, emb_dim: int, dtype: str = "float32"):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.clip = CLIPImageEncoder(path, dtype)
        features = self.clip.features
        # CLIP's embedding and hidden states differ in scale by model: one norm evens them out.
        self.norm = nn.LayerNorm(features)
        self.to_tokens = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, tokens * dim))
        self.to_embedding = nn.Sequential(nn.Linear(features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        # image: (B, 3, H, W) -> (B, K, dim), (B, emb_dim)
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"cond.reference must be (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
        features = self.norm(self.clip(image).to(self.norm.weight.dtype))           # (B, F)
        return self.to_tokens(features).view(-1, self.tokens, self.dim), self.to_embedding(features)
