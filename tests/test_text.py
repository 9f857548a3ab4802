"""Text encoders: the word tokenizer, the built-in encoder, and frozen CLIP / T5 from local folders.

CLIP and T5 are tiny random models with tokenizers built here from hand-written vocabularies,
saved with ``save_pretrained`` into a temporary folder: nothing is downloaded.
"""
import json
import shutil
import sys

import pytest
import torch

from vidiff import Conditioning
from vidiff.config import ConfigError, from_dict
from vidiff.text import (BuiltinTextEncoder, TextEncoderConfig, WordTokenizer, build_text_encoder,
                         load_text_encoder)

CAPTIONS = ["a red circle moving left", "a blue square moving right", "Two RED squares!",
            "a green triangle bouncing", "the red circle"]


def make_builtin(seed: int = 0, **config) -> BuiltinTextEncoder:
    torch.manual_seed(seed)
    return build_text_encoder(TextEncoderConfig(**config), captions=CAPTIONS)


#################################################################################
#                                Tokenizer                                      #
#################################################################################


def test_tokenizer_ids_unknown_words_and_padding():
    tok = WordTokenizer.build(CAPTIONS)
    # "a", "red" and "moving" are the most frequent words, so they come first (after specials)
    assert tok.tokens[:3] == ["<pad>", "<unk>", "<bos>"]
    assert tok.tokens[3:5] == ["a", "red"] and tok.ids["a"] == 3 and tok.ids["red"] == 4
    assert WordTokenizer.split("Two RED squares!  x-2, café") == ["two", "red", "squares", "x", "2", "café"]
    ids, mask = tok(["red circle", "A purple circle, moving"])
    bos, unk = WordTokenizer.BOS, WordTokenizer.UNK
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [[bos, tok.ids["red"], tok.ids["circle"], 0, 0],
                            [bos, tok.ids["a"], unk, tok.ids["circle"], tok.ids["moving"]]]
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    # an empty prompt still has its start token
    ids, mask = tok([""])
    assert ids.tolist() == [[bos]] and mask.tolist() == [[True]]
    # truncation keeps the first max_length tokens, <bos> included
    ids, _ = tok(["a red circle moving left"], max_length=3)
    assert ids.tolist() == [[bos, tok.ids["a"], tok.ids["red"]]]
    assert tok.decode([bos, tok.ids["red"], unk, 0]) == "red <unk>"


def test_tokenizer_min_count_and_order_independence():
    tok = WordTokenizer.build(CAPTIONS, min_count=2)
    assert set(tok.tokens[3:]) == {"a", "red", "circle", "moving"}
    assert WordTokenizer.build(reversed(CAPTIONS)).tokens == WordTokenizer.build(CAPTIONS).tokens
    with pytest.raises(ValueError, match="single lowercase words"):
        WordTokenizer(["Red"])


def test_tokenizer_json_round_trip_is_exact(tmp_path):
    tok = WordTokenizer.build(CAPTIONS + ["naïve émoji 42"])
    tok.save(tmp_path / "vocab.json")
    back = WordTokenizer.load(tmp_path / "vocab.json")
    assert back == tok and back.tokens == tok.tokens and back.ids == tok.ids
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))["words"] == tok.tokens[3:]
    (tmp_path / "bad.json").write_text(json.dumps({"words": ["a"]}))
    with pytest.raises(ValueError, match="not a vidiff word vocabulary"):
        WordTokenizer.load(tmp_path / "bad.json")


#################################################################################
#                              Built-in encoder                                 #
#################################################################################


def test_builtin_shapes_mask_and_conditioning():
    enc = make_builtin()
    assert (enc.dim, enc.pooled_dim, enc.max_length, enc.trainable) == (128, 128, 16, True)
    prompts = ["red circle", "", "a blue square moving right now", " ".join(["red"] * 40)]
    emb, mask, pooled = enc.encode(prompts)
    assert emb.shape == (4, 16, 128) and mask.shape == (4, 16) and pooled.shape == (4, 128)
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    # <bos> + words, cut at max_length
    assert mask.sum(1).tolist() == [3, 1, 7, 16]
    assert torch.equal(mask, torch.arange(16)[None] < mask.sum(1, keepdim=True))
    assert emb[~mask].abs().sum() == 0 and emb[mask].abs().sum() > 0
    cond = enc.conditioning(prompts)
    assert isinstance(cond, Conditioning) and cond.batch_size == 4
    assert torch.equal(cond.text, emb) and torch.equal(cond.text_mask, mask)
    assert torch.equal(cond.text_pooled, pooled)


def test_builtin_padding_invariance():
    enc = make_builtin(depth=3)
    short = "red circle"
    alone, mask_alone, pooled_alone = enc.encode([short])
    batch, mask_batch, pooled_batch = enc.encode([short, "a blue square moving right and left"])
    n = int(mask_alone.sum())
    assert batch.shape[1] > n and mask_batch[0].sum() == n
    torch.testing.assert_close(batch[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_batch[0], pooled_alone[0], atol=1e-5, rtol=1e-5)
    # and the encoding depends on the words: a different prompt gives a different vector
    assert not torch.allclose(enc.encode(["blue circle"])[2], pooled_alone, atol=1e-3)


def test_builtin_pooling_words_and_mean():
    # "words": sum of the real tokens' embeddings / sqrt(count), from the embedding table;
    # "mean": mean of the output tokens. Word pooling is order-free and, at init, a one-word
    # change moves it as far as the two word vectors are apart.
    prompts = ["a red circle moving left", "a red circle moving right", "red a circle moving right"]
    enc = make_builtin()
    emb, mask, pooled = enc.encode(prompts)
    ids, _ = enc.tokenize(prompts)
    table = enc.token_embedding.weight.detach()
    for i in range(3):
        expected = table[ids[i][mask[i]]].sum(0) / mask[i].sum().sqrt()
        torch.testing.assert_close(pooled[i], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled[2], pooled[1])
    left, right = table[ids[0, 5]], table[ids[1, 5]]          # <bos> + 5 words: the last one
    torch.testing.assert_close((pooled[0] - pooled[1]).norm(), (left - right).norm() / 6 ** 0.5)
    mean_enc = make_builtin(pooling="mean")
    emb, mask, pooled = mean_enc.encode(prompts)
    torch.testing.assert_close(pooled, (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    with pytest.raises(ConfigError, match="text.pooling"):
        TextEncoderConfig(pooling="max")


def test_builtin_save_load_round_trip(tmp_path):
    enc = make_builtin(dim=64, heads=2, max_length=8)
    with torch.no_grad():  # move away from the initialisation so a fresh build would differ
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    enc.save(tmp_path / "text_encoder")
    assert {f.name for f in (tmp_path / "text_encoder").iterdir()} == {
        "config.json", "vocab.json", "model.safetensors"}
    back = load_text_encoder(tmp_path / "text_encoder")
    assert isinstance(back, BuiltinTextEncoder) and back.tokenizer == enc.tokenizer
    assert (back.dim, back.max_length) == (64, 8)
    prompts = ["a red circle", "unknown words here", "two red squares moving left fast"]
    for a, b in zip(enc.encode(prompts), back.encode(prompts)):
        assert torch.equal(a, b)


def test_builtin_gradients_flow_to_every_parameter():
    enc = make_builtin()
    emb, mask, pooled = enc.encode(["a red circle", "blue square"])
    g = torch.Generator().manual_seed(0)
    # random weights: the plain sum of a LayerNorm output has zero gradient
    loss = (emb * torch.randn(emb.shape, generator=g)).sum() + \
        (pooled * torch.randn(pooled.shape, generator=g)).sum()
    loss.backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_config_validation_and_factory_errors(tmp_path):
    with pytest.raises(ConfigError, match="text.kind"):
        TextEncoderConfig(kind="bert")
    with pytest.raises(ConfigError, match="text.path is required"):
        TextEncoderConfig(kind="clip")
    with pytest.raises(ConfigError, match="frozen encoders only"):
        TextEncoderConfig(dtype="float16")
    with pytest.raises(ConfigError, match="not divisible"):
        TextEncoderConfig(dim=130, heads=4)
    assert from_dict(TextEncoderConfig, {"kind": "t5", "path": "x", "max_length": "64"}).max_length == 64
    assert build_text_encoder(TextEncoderConfig(kind="none")) is None
    with pytest.raises(ValueError, match="captions"):
        build_text_encoder(TextEncoderConfig())
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path)


#################################################################################
#                          Frozen CLIP and T5 (tiny)                             #
#################################################################################

PROMPTS = ["a red circle moving left", "circle", "a red red circle and a blue square"]


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


def _clip_tokenizer(hf):
    # Byte-level BPE with every single byte (alone and word-final) plus a few merges, so
    # any text tokenizes and "red"/"circle" become one token each.
    from tokenizers.pre_tokenizers import ByteLevel
    chars = sorted(ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars])}
    merges = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("cir", "c"), ("circ", "l"),
              ("circl", "e</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return hf.CLIPTokenizer(vocab=vocab, merges=merges)


def _save_clip(hf, folder, projection: bool):
    tok = _clip_tokenizer(hf)
    config = hf.CLIPTextConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, projection_dim=16,
                               max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    cls = hf.CLIPTextModelWithProjection if projection else hf.CLIPTextModel
    cls(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(hf, tmp_path_factory):
    return _save_clip(hf, tmp_path_factory.mktemp("clip"), projection=True)


@pytest.fixture(scope="module")
def t5_dir(hf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    words = "▁a ▁red ▁circle ▁blue ▁square ▁moving ▁left ▁and ▁".split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + \
        [(w, -1.0 - 0.1 * i) for i, w in enumerate(words + list("abcdefghijklmnopqrstuvwxyz"))]
    tok = hf.T5Tokenizer(vocab=pieces, extra_ids=0)
    config = hf.T5Config(vocab_size=len(pieces), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                         num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.1,
                         pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    hf.T5EncoderModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _reference(hf, kind, folder, prompts):
    """Tokens and outputs of the transformers model run directly, padded to the longest prompt."""
    tok = hf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    batch = tok(prompts, padding="longest", return_tensors="pt")
    cls = hf.CLIPTextModelWithProjection if kind == "clip" else hf.T5EncoderModel
    model = cls.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    hidden = out.last_hidden_state * mask[..., None]
    if kind == "clip":
        pooled = out.text_embeds
    else:
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True)
    return batch["input_ids"], mask, hidden, pooled


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_frozen_matches_transformers_and_is_frozen(hf, kind, clip_dir, t5_dir):
    folder = clip_dir if kind == "clip" else t5_dir
    enc = build_text_encoder(TextEncoderConfig(kind=kind, path=str(folder)))
    ids_ref, mask_ref, hidden_ref, pooled_ref = _reference(hf, kind, folder, PROMPTS)
    assert enc.trainable is False and enc.dim == 32
    assert enc.pooled_dim == (16 if kind == "clip" else 32)
    ids, mask = enc.tokenize(PROMPTS)
    assert torch.equal(ids, ids_ref) and torch.equal(mask, mask_ref)
    emb, mask, pooled = enc.encode(PROMPTS)
    torch.testing.assert_close(emb, hidden_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, pooled_ref, atol=1e-5, rtol=1e-5)
    # frozen: no parameter trains, no graph is built, and .train() leaves dropout off
    assert all(not p.requires_grad for p in enc.parameters())
    assert not emb.requires_grad and not pooled.requires_grad
    enc.train()
    assert not enc.model.training
    torch.testing.assert_close(enc.encode(PROMPTS)[0], emb)
    # padding invariance: the short prompt alone gives its batched tokens
    alone, mask_alone, pooled_alone = enc.encode(PROMPTS[1:2])
    n = int(mask_alone.sum())
    torch.testing.assert_close(alone[0, :n], emb[1, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_alone[0], pooled[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_frozen_half_precision(hf, kind, clip_dir, t5_dir):
    folder = clip_dir if kind == "clip" else t5_dir
    full = build_text_encoder(TextEncoderConfig(kind=kind, path=str(folder)))
    half = build_text_encoder(TextEncoderConfig(kind=kind, path=str(folder), dtype="float16"))
    # transformers keeps a few layers in float32 on purpose (T5's "wo" overflows in half)
    keep = tuple(getattr(half.model, "_keep_in_fp32_modules", None) or ())
    dtypes = {n: p.dtype for n, p in half.named_parameters()}
    assert all(d == torch.float16 for n, d in dtypes.items() if not any(k in n for k in keep))
    assert sum(d == torch.float16 for d in dtypes.values()) > len(dtypes) / 2
    a, b = full.encode(PROMPTS), half.encode(PROMPTS)
    assert b[0].dtype == torch.float32 and b[2].dtype == torch.float32
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(b[0], a[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(b[2], a[2], atol=2e-2, rtol=2e-2)
    assert not torch.equal(b[0], a[0])  # it really ran in half precision


def test_clip_without_projection_pools_pooler_output(hf, tmp_path):
    folder = _save_clip(hf, tmp_path / "clip_plain", projection=False)
    enc = build_text_encoder(TextEncoderConfig(kind="clip", path=str(folder), max_length=6))
    assert enc.pooled_dim == 32 and enc.max_length == 6
    tok = hf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    batch = tok(PROMPTS, padding="longest", truncation=True, max_length=6, return_tensors="pt")
    model = hf.CLIPTextModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        ref = model(**batch).pooler_output
    emb, mask, pooled = enc.encode(PROMPTS)
    assert emb.shape[1] == 6
    torch.testing.assert_close(pooled, ref, atol=1e-5, rtol=1e-5)


def test_frozen_checkpoint_records_path_and_can_be_repointed(hf, clip_dir, tmp_path):
    enc = build_text_encoder(TextEncoderConfig(kind="clip", path=str(clip_dir)))
    enc.save(tmp_path / "text_encoder")
    assert [f.name for f in (tmp_path / "text_encoder").iterdir()] == ["config.json"]
    saved = json.loads((tmp_path / "text_encoder" / "config.json").read_text())["config"]
    assert saved["path"] == str(clip_dir.resolve()) and saved["max_length"] == 32
    expected = enc.encode(PROMPTS)
    moved = shutil.copytree(clip_dir, tmp_path / "elsewhere" / "clip")
    back = load_text_encoder(tmp_path / "text_encoder", path_override=str(moved))
    assert back.config.path == str(moved.resolve())
    for a, b in zip(expected, back.encode(PROMPTS)):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_encoder(tmp_path / "text_encoder", path_override=str(tmp_path / "gone"))


def test_clip_diffusers_layout_finds_sibling_tokenizer(hf, clip_dir, tmp_path):
    # text_encoder/ holds the model, tokenizer/ next to it holds the tokenizer
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "tokenizer").mkdir()
    for f in clip_dir.iterdir():
        dest = "text_encoder" if f.name in ("config.json", "model.safetensors") else "tokenizer"
        shutil.copy(f, tmp_path / dest / f.name)
    enc = build_text_encoder(TextEncoderConfig(kind="clip", path=str(tmp_path / "text_encoder")))
    ref = build_text_encoder(TextEncoderConfig(kind="clip", path=str(clip_dir)))
    for a, b in zip(enc.encode(PROMPTS), ref.encode(PROMPTS)):
        assert torch.equal(a, b)


def test_frozen_wrong_directory_errors(hf, clip_dir, t5_dir, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError) as err:
        build_text_encoder(TextEncoderConfig(kind="t5", path=str(missing)))
    assert str(missing) in str(err.value) and "config.json" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json, model weights, tokenizer files"):
        build_text_encoder(TextEncoderConfig(kind="clip", path=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="of type 't5'"):
        build_text_encoder(TextEncoderConfig(kind="clip", path=str(t5_dir)))


def test_missing_transformers_says_how_to_install(monkeypatch, tmp_path):
    from vidiff.text.hf import import_transformers
    # a folder that passes the file checks, so the import is what fails
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r'pip install "vidiff\[text\]"'):
        import_transformers()
    with pytest.raises(ImportError, match=r'pip install "vidiff\[text\]"'):
        build_text_encoder(TextEncoderConfig(kind="clip", path=str(tmp_path)))
