"""CLIP similarity with a tiny random CLIP saved locally (nothing downloads)."""
import json

import numpy as np
import pytest
import torch

from vidiff.cli import main
from vidiff.video import Video

hf = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from test_text import _clip_tokenizer  # the project's hand-built byte-level BPE vocabulary
    folder = tmp_path_factory.mktemp("clip")
    tok = _clip_tokenizer(hf)
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  image_size=16, patch_size=8)
    torch.manual_seed(0)
    hf.CLIPModel(hf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tok.save_pretrained(folder)
    hf.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def _reference(folder, frames, prompt):
    model = hf.CLIPModel.from_pretrained(str(folder)).eval()
    tok = hf.AutoTokenizer.from_pretrained(str(folder))
    pixels = hf.CLIPImageProcessor.from_pretrained(str(folder))(images=list(frames), return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**tok([prompt], return_tensors="pt"))
        image = model.get_image_features(pixel_values=pixels["pixel_values"])
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    return torch.nn.functional.cosine_similarity(image, text, dim=-1).numpy()


def test_clip_similarity_matches_transformers(clip_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    frames = {name: rng.integers(0, 256, size=(3, 20, 24, 3), dtype=np.uint8) for name in ("a", "b")}
    for name, f in frames.items():
        Video(f).save(clips / name)
    (clips / "captions.jsonl").write_text('{"file": "a", "caption": "a red circle"}\n'
                                          '{"file": "b", "caption": "circle"}\n')
    out = tmp_path / "clip.json"
    assert main(["eval", "clip", str(clips), "--clip-dir", str(clip_dir), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for row, (name, prompt) in zip(report["clips"], (("a", "a red circle"), ("b", "circle"))):
        cos = _reference(clip_dir, frames[name], prompt)
        assert row["prompt"] == prompt and row["per_frame"] == pytest.approx(cos.tolist(), abs=1e-5)
        assert row["similarity"] == pytest.approx(cos.mean(), abs=1e-5)
        assert row["clip_score"] == pytest.approx((100 * np.clip(cos, 0, None)).mean(), abs=1e-3)
    assert report["mean"]["similarity"] == pytest.approx(np.mean([r["similarity"] for r in report["clips"]]))
    assert "mean of 2" in capsys.readouterr().out
    # bad input: prompts file of the wrong length, a non-CLIP folder; no report written
    out.unlink()
    (tmp_path / "p.txt").write_text("one prompt\n")
    assert main(["eval", "clip", str(clips), "--clip-dir", str(clip_dir), "--prompts", str(tmp_path / "p.txt"),
                 "--json", str(out)]) == 2
    assert "has 1 prompts for 2 clips" in capsys.readouterr().err
    assert main(["eval", "clip", str(clips), "--clip-dir", str(tmp_path), "--json", str(out)]) == 2
    assert "has no config.json" in capsys.readouterr().err and not out.exists()
