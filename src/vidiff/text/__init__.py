"""Text encoders behind one interface (:class:`TextEncoder`).

* ``builtin`` — a small transformer over a word vocabulary built from the training
  captions, trained with the denoiser and saved in the checkpoint (no download, ever);
* ``clip`` / ``t5`` — frozen models from a local directory through ``transformers``
  (optional extra: ``pip install "vidiff[text]"``), recorded in checkpoints by path.

>>> enc = build_text_encoder(TextEncoderConfig(), captions=["a red circle", "a blue square"])
>>> tokens, mask, pooled = enc.encode(["a red circle"])   # (1, 4, 128), (1, 4), (1, 128)
"""
from vidiff.text.base import TextEncoder, TextEncoderConfig, masked_mean
from vidiff.text.builtin import BuiltinTextEncoder
from vidiff.text.factory import build_text_encoder, load_text_encoder
# vidiff.text.hf imports transformers only when a CLIP/T5 encoder is built, so this stays light.
from vidiff.text.hf import CLIPTextEncoder, T5TextEncoder, import_transformers
from vidiff.text.tokenizer import WordTokenizer

__all__ = ["TextEncoder", "TextEncoderConfig", "BuiltinTextEncoder", "WordTokenizer",
           "CLIPTextEncoder", "T5TextEncoder", "build_text_encoder", "load_text_encoder",
           "import_transformers", "masked_mean"]
