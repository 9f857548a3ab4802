"""Reference images from a frozen CLIP vision model in a local folder (``reference_encoder: clip``),
with a tiny random CLIP saved in the test (nothing downloads): the features are what
``transformers`` computes on pixels prepared by hand; the CLIP weights stay frozen and out of
checkpoints while the projection trains; the pathway is exactly absent without a reference and
adds nothing through the embedding at first; a bad folder is one error naming it; a run trains
through ``vidiff train``'s trainer and samples with ``--reference``, and its CLIP folder can move."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vidiff
from test_backbones import TEXT_DIM, UNET, one_per_backbone, perturb, text_cond
from vidiff.cli import main
from vidiff.config import ConfigError
from vidiff.data.shapes import render
from vidiff.models.reference_clip import CLIP_MEAN, CLIP_STD, CLIPImageEncoder, CLIPReferenceEncoder
from vidiff.train.config import load_run_config
from vidiff.train.run import build_trainer
from vidiff.video import Video

hf = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8, projection_dim=16)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)      # not CLIP's: the processor's file must be read


def _save(folder, cls=None, processor=True):
    torch.manual_seed(0)
    (cls or hf.CLIPVisionModelWithProjection)(hf.CLIPVisionConfig(**VISION)).save_pretrained(folder)
    if processor:
        hf.CLIPImageProcessor(image_mean=list(MEAN), image_std=list(STD)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("clip-vision"))


def image(seed: int = 7, B: int = 2, H: int = 20, W: int = 24) -> torch.Tensor:
    return torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def normalise(x01: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- the frozen encoder
def test_preprocessing_is_a_whole_image_resize_and_the_processors_normalisation(clip_dir):
    enc = CLIPImageEncoder(clip_dir)
    # At the model's size: no resize, only the processor's normalisation (as transformers' own
    # processor computes it from 8-bit pixels).
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    ours = enc.preprocess(pixels.float() / 127.5 - 1)
    assert ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, normalise(pixels.float() / 255), atol=1e-5, rtol=0)
    theirs = hf.CLIPImageProcessor.from_pretrained(str(clip_dir))(
        images=list(pixels.permute(0, 2, 3, 1).numpy().astype(np.uint8)), do_resize=False,
        do_center_crop=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # A constant colour stays that colour at any size.
    colour = torch.tensor([0.2, -0.6, 0.9]).view(1, 3, 1, 1)
    flat = enc.preprocess(colour.expand(1, 3, 20, 50))
    torch.testing.assert_close(flat, normalise((colour.expand(1, 3, 32, 32) + 1) / 2), atol=1e-6, rtol=0)
    # A 2x downscale of a horizontal ramp is the ramp at the output pixels' centres (input
    # column 2j + 0.5) away from the borders: the whole width is kept, none of it cropped.
    ramp = (torch.arange(64.0) / 63 * 1.6 - 0.8).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    out = enc.preprocess(ramp) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    j = torch.arange(3, 29.0)
    expected = ((2 * j + 0.5) / 63 * 1.6 - 0.8 + 1) / 2
    torch.testing.assert_close(out[0, :, 5:-5, 3:29], expected.expand(3, 22, -1), atol=1e-5, rtol=0)


def test_features_are_what_transformers_computes(clip_dir, tmp_path):
    ref = hf.CLIPVisionModelWithProjection.from_pretrained(str(clip_dir)).eval()
    x = image(H=32, W=32)
    pixels = normalise((x + 1) / 2)
    with torch.no_grad():
        out = ref(pixel_values=pixels)
    expected = torch.cat([out.image_embeds, out.last_hidden_state[:, 1:].mean(1)], 1)
    enc = CLIPImageEncoder(clip_dir)
    assert enc.features == 16 + 32 and enc.image_size == 32
    torch.testing.assert_close(enc(x), expected, atol=1e-5, rtol=1e-5)
    # Without a projection the pooled output is the embedding; without a processor file the
    # normalisation is CLIP's own.
    plain = _save(tmp_path / "plain", hf.CLIPVisionModel, processor=False)
    ref = hf.CLIPVisionModel.from_pretrained(str(plain)).eval()
    with torch.no_grad():
        out = ref(pixel_values=normalise((x + 1) / 2, CLIP_MEAN, CLIP_STD))
    enc = CLIPImageEncoder(plain)
    assert enc.features == 32 + 32 and not enc.has_projection
    torch.testing.assert_close(enc(x), torch.cat([out.pooler_output, out.last_hidden_state[:, 1:].mean(1)], 1),
                               atol=1e-5, rtol=1e-5)
    # A full CLIPModel folder: its vision tower and projection alone are loaded.
    full = tmp_path / "full"
    torch.manual_seed(0)
    clip = hf.CLIPModel(hf.CLIPConfig(text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=64, vocab_size=50),
                                      vision_config={k: v for k, v in VISION.items() if k != "projection_dim"},
                                      projection_dim=16)).eval()
    clip.save_pretrained(full)
    with torch.no_grad():
        embeds = clip.get_image_features(pixel_values=normalise((x + 1) / 2, CLIP_MEAN, CLIP_STD))
    embeds = embeds if isinstance(embeds, torch.Tensor) else embeds.pooler_output
    torch.testing.assert_close(CLIPImageEncoder(full)(x)[:, :16], embeds, atol=1e-5, rtol=1e-5)


def test_the_encoder_is_frozen_and_reuses_the_features_of_the_same_pixels(clip_dir):
    enc = CLIPImageEncoder(clip_dir)
    assert not any(p.requires_grad for p in enc.parameters()) and enc.trainable is False
    enc.train()
    assert enc.training and not enc.model.training          # no dropout switched on by a trainer
    calls = []
    enc.model.register_forward_hook(lambda *_: calls.append(1))
    a = enc(image())
    b = enc(image().clone())                                  # another tensor, the same pixels
    c = enc(image(seed=8))
    assert len(calls) == 2 and torch.equal(a, b) and not torch.equal(a, c) and not a.requires_grad
    half = CLIPImageEncoder(clip_dir, dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and half(image()).dtype == torch.float32
    torch.testing.assert_close(half(image()), a, atol=0.1, rtol=0.1)


def test_a_bad_folder_or_config_is_one_clear_error(clip_dir, tmp_path, monkeypatch):
    missing = tmp_path / "no_such_clip"
    with pytest.raises(FileNotFoundError) as err:
        CLIPReferenceEncoder(missing, dim=16, tokens=2, emb_dim=32)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json, model weights"):
        CLIPImageEncoder(tmp_path / "empty")
    text = tmp_path / "text"
    hf.CLIPTextModel(hf.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, vocab_size=50)).save_pretrained(text)
    with pytest.raises(ValueError, match="of type 'clip_text_model'"):
        CLIPImageEncoder(text)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        CLIPImageEncoder(clip_dir, dtype="int8")
    for overrides, message in (
            (dict(reference_tokens=2, reference_encoder="clip"), "reference_encoder_path is required"),
            (dict(reference_encoder="clip", reference_encoder_path=str(clip_dir)), "set reference_tokens > 0"),
            (dict(reference_tokens=2, reference_encoder_path=str(clip_dir)), "set reference_encoder: clip"),
            (dict(reference_tokens=2, reference_encoder="siglip"), "reference_encoder: 'siglip' is not one of"),
            (dict(reference_tokens=2, reference_encoder="clip", reference_encoder_path=str(clip_dir),
                  reference_encoder_dtype="half"), "reference_encoder_dtype: 'half'")):
        with pytest.raises(ConfigError, match=message):
            UNET.build(text_dim=TEXT_DIM, **overrides)
    monkeypatch.setitem(sys.modules, "transformers", None)      # makes `import transformers` fail
    with pytest.raises(ImportError, match=r'pip install "vidiff\[text\]"'):
        CLIPImageEncoder(clip_dir)


# ----------------------------------------------------------------------------- in a network
@pytest.mark.parametrize("b", one_per_backbone())
def test_without_a_reference_the_clip_pathway_is_exactly_absent(b, clip_dir):
    plain = b.make(text_dim=TEXT_DIM)
    torch.manual_seed(11)
    net = b.build(text_dim=TEXT_DIM, reference_tokens=3, reference_encoder="clip",
                  reference_encoder_path=str(clip_dir)).eval()
    clip_weights = {k: v.clone() for k, v in net.cond.reference.clip.state_dict().items()}
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(m.startswith("cond.reference.") for m in missing)
    for k, v in CLIPImageEncoder(clip_dir).state_dict().items():   # the network's init kept them
        assert torch.equal(clip_weights[k], v), k
    x, t = b.clip(T=3), torch.rand(2)
    with torch.no_grad():
        alone = plain(x, t, text_cond())
        assert torch.equal(net(x, t, text_cond()), alone)
        given = net(x, t, text_cond(reference=image()))
        masked = net(x, t, text_cond(reference=image(), reference_mask=torch.tensor([False, True])))
        # At initialisation the reference adds nothing to the per-sample embedding (its last
        # layer is zero): its only effect is its K tokens after the prompt's.
        emb, context, mask = net.cond(t, text_cond(reference=image()), x.device)
        emb0, context0, mask0 = net.cond(t, text_cond(), x.device)
    assert not torch.allclose(given, alone, atol=1e-4)
    assert torch.equal(masked[0], alone[0]) and torch.allclose(masked[1], given[1], atol=1e-6)
    assert torch.equal(emb, emb0) and torch.equal(context[:, :-3], context0) and mask[:, -3:].all()
    assert context.shape[1] == context0.shape[1] + 3 and torch.equal(mask[:, :-3], mask0)


def test_at_initialisation_a_reference_through_the_embedding_changes_nothing(clip_dir):
    # A U-Net without cross-attention reads the reference through the embedding alone, so a
    # reference changes nothing until the zero layer trains, and then it does.
    options = dict(text_dim=TEXT_DIM, cross_attention=(), mid_attention=False, reference_tokens=2)
    net = UNET.make(reference_encoder="clip", reference_encoder_path=str(clip_dir), trained=False, **options)
    perturb(net, lambda n: ".reference." not in n)                     # "trained", the pathway new
    x, t = UNET.clip(T=3), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(net(x, t, text_cond(reference=image())), net(x, t, text_cond()))
        perturb(net, lambda n: "to_embedding.2" in n)
        assert not torch.allclose(net(x, t, text_cond(reference=image())), net(x, t, text_cond()), atol=1e-5)


# ----------------------------------------------------------------------------- a run, end to end
RUN = {"model": {"size": "unet-tiny", "overrides": {"channels": [8, 16], "norm_groups": 4, "patch": 2,
                                                    "spatial_attention": [], "temporal_attention": [],
                                                    "mid_attention": False, "reference_tokens": 2,
                                                    "reference_encoder": "clip"}},
       "data": {"name": "shapes", "frames": 4, "size": 16},
       "text": {"dim": 16, "depth": 1, "heads": 2},
       "reference": {"prob": 1.0, "drop_words": ["red", "green", "blue", "circle", "square", "triangle"]},
       "train": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 3, "lr": 1e-2}}


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, one_thread):
    """A run trained 3 steps with a CLIP reference encoder (its own copy of the CLIP folder, so
    a test may move it) and the trainer that ran it, with its parameters before training."""
    root = tmp_path_factory.mktemp("clip-run")
    clip = _save(root / "clip")
    run = load_run_config(None, [f"train.out_dir={root / 'run'}",
                                 f"model.overrides.reference_encoder_path={clip}"], base=RUN)
    trainer = build_trainer(run, progress=False)
    before = {k: v.detach().clone() for k, v in trainer.objective.state_dict().items()}
    trainer.fit()
    return root, trainer, before


def test_training_moves_the_projection_and_leaves_clip_frozen_and_out_of_checkpoints(clip_run):
    root, trainer, before = clip_run
    state = trainer.objective.state_dict()
    prefix = "network.cond.reference."
    clip_keys = [k for k in state if k.startswith(prefix + "clip.")]
    saved = hf.CLIPVisionModelWithProjection.from_pretrained(str(root / "clip")).state_dict()
    assert clip_keys and all(torch.equal(state[k], before[k]) for k in clip_keys)
    assert all(torch.equal(state[prefix + "clip.model." + k], v) for k, v in saved.items())
    assert not any(p.requires_grad for p in trainer.objective.network.cond.reference.clip.parameters())
    for name in ("to_tokens.2.weight", "to_embedding.2.weight", "norm.weight"):
        assert not torch.equal(state[prefix + name], before[prefix + name]), name
    assert not before[prefix + "to_embedding.2.weight"].any()                 # it started at zero
    checkpoint = root / "run" / "checkpoints" / "step_0000003"
    for file in ("model.safetensors", "ema.safetensors"):
        keys = load_file(str(checkpoint / file)).keys()
        assert prefix + "to_tokens.0.weight" in keys and not any(".clip." in k for k in keys), file
    network = json.loads((checkpoint / "config.json").read_text())["network"]
    assert network["reference_encoder"] == "clip" and network["reference_encoder_path"] == str(root / "clip")


def test_generate_with_a_clip_reference_and_a_moved_folder(clip_run, tmp_path, capsys):
    root, _, _ = clip_run
    run = root / "run"
    frame = render("blue", "square", "up", frames=2, size=16)[0]                   # (H, W, 3) uint8
    Image.fromarray(frame).save(tmp_path / "ref.png")
    pipe = vidiff.load(run, device="cpu")
    with_reference = pipe.generate("a moving up", reference=frame, steps=2, seed=1)
    plain = pipe.generate("a moving up", steps=2, seed=1)
    assert not np.array_equal(with_reference.frames, plain.frames)
    out = tmp_path / "o.mp4"
    assert main(["generate", "--model", str(run), "--prompt", "a moving up", "--reference",
                 str(tmp_path / "ref.png"), "--steps", "2", "--out", str(out)]) == 0
    assert Video.load(out).num_frames == 4
    # The CLIP folder moves: loading names the folder it looked for; re-pointed, nothing changes.
    moved = shutil.move(str(root / "clip"), str(tmp_path / "elsewhere"))
    try:
        with pytest.raises(FileNotFoundError, match=str(root / "clip")):
            vidiff.load(run, device="cpu")
        capsys.readouterr()
        assert main(["generate", "--model", str(run), "--prompt", "a moving up", "--reference",
                     str(tmp_path / "ref.png"), "--steps", "2", "--out", str(tmp_path / "x.mp4")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(root / "clip") in err[0] and not (tmp_path / "x.mp4").exists()
        again = vidiff.load(run, device="cpu", reference_encoder_path=moved)
        assert again.network.config.reference_encoder_path == str(tmp_path / "elsewhere")
        assert np.array_equal(again.generate("a moving up", reference=frame, steps=2, seed=1).frames,
                              with_reference.frames)
    finally:
        shutil.move(moved, str(root / "clip"))
