"""ControlNet: zero at initialisation on both backbones, residuals where they belong, a frozen
base in training, the base fingerprint, the control range, and the built-in extractors
against maps known in closed form."""
import dataclasses

import numpy as np
import pytest
import torch

import vidiff
from test_backbones import TEXT_DIM, one_per_backbone, perturb, text_cond
from vidiff.checkpoint import read_config, resolve_checkpoint
from vidiff.compose import DiffusionConfig, load_controlnet, load_denoiser, weights_fingerprint
from vidiff.conditioning import Conditioning
from vidiff.config import ConfigError, to_dict
from vidiff.data.control import ControlError, depth, edges, extract, load_extractor, silhouette
from vidiff.data.shapes import geometry, render, shape_masks
from vidiff.models.controlnet import ControlledNetwork, ControlNetConfig
from vidiff.models.registry import architecture_of, build_controlnet
from vidiff.train.config import load_run_config
from vidiff.train.run import train
from vidiff.video import Video

pytestmark = pytest.mark.usefixtures("one_thread")


def controlled(b, **config):
    """A perturbed tiny base of backbone ``b`` with text, and a ControlNet copied from it."""
    base = b.make(text_dim=TEXT_DIM)
    perturb(base, scale=0.02, seed=5)               # a base that is not at its own init
    cfg = ControlNetConfig(base_arch=architecture_of(base.config), base=to_dict(base.config), **config)
    controlnet = build_controlnet(cfg).eval()
    controlnet.load_base(base)
    return base, controlnet


def maps_for(x: torch.Tensor, seed: int = 4) -> torch.Tensor:
    B, _, T, H, W = x.shape
    return torch.rand(B, 1, T, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("b", one_per_backbone())
def test_a_new_controlnet_leaves_the_base_bit_equal(b):
    base, controlnet = controlled(b)
    x, t = b.clip(T=5), torch.rand(2)
    cond = text_cond(control=maps_for(x))
    with torch.no_grad():
        alone = base(x, t, text_cond())
        steered = ControlledNetwork(base, controlnet)(x, t, cond)
    assert torch.equal(alone, steered)
    # The copy really is the base's encoder: its weights are the base's, name by name.
    own = controlnet.copy.state_dict()
    assert own and all(torch.equal(v, base.state_dict()[k]) for k, v in own.items())


@pytest.mark.parametrize("b", one_per_backbone())
def test_trained_projections_steer_the_base_and_follow_the_maps(b):
    # Once the zero layers have moved, the output depends on the maps: a ControlNet whose
    # residuals never reached the base would pass the bit-equality test above too.
    base, controlnet = controlled(b)
    perturb(controlnet, lambda n: n.startswith(("zeros.", "hint.")), scale=0.1, seed=6)
    x, t = b.clip(T=5), torch.rand(2)
    net = ControlledNetwork(base, controlnet)
    with torch.no_grad():
        alone = base(x, t, text_cond())
        one = net(x, t, text_cond(control=maps_for(x, seed=1)))
        two = net(x, t, text_cond(control=maps_for(x, seed=2)))
        half = ControlledNetwork(base, controlnet, scale=0.5)(x, t, text_cond(control=maps_for(x, seed=1)))
        off = ControlledNetwork(base, controlnet, scale=0.0)(x, t, text_cond(control=maps_for(x, seed=1)))
    assert not torch.allclose(one, alone, atol=1e-4) and not torch.allclose(one, two, atol=1e-4)
    assert torch.equal(off, alone)
    # Residuals enter linearly at the last layer of a DiT block and of a U-Net skip, so half the
    # scale lands strictly between the base and the full control.
    assert 0 < (half - alone).abs().mean() < (one - alone).abs().mean()


@pytest.mark.parametrize("b", one_per_backbone())
def test_control_range_is_a_fraction_of_the_run_from_noise(b):
    base, controlnet = controlled(b)
    perturb(controlnet, lambda n: n.startswith(("zeros.", "hint.")), scale=0.1, seed=6)
    x = b.clip(T=5)
    t = torch.tensor([0.9, 0.2])               # 10% and 80% of the way from noise to clean
    cond = text_cond(control=maps_for(x))
    with torch.no_grad():
        alone = base(x, t, text_cond())
        full = ControlledNetwork(base, controlnet)(x, t, cond)
        early = ControlledNetwork(base, controlnet, span=(0.0, 0.5))(x, t, cond)
    assert torch.allclose(early[0], full[0], atol=1e-5) and not torch.allclose(early[0], alone[0], atol=1e-4)
    assert torch.equal(early[1], alone[1])
    with pytest.raises(ValueError, match="0 <= START < END <= 1"):
        ControlledNetwork(base, controlnet, span=(0.6, 0.2))


def test_controlnet_refuses_maps_of_another_shape():
    from test_backbones import UNET
    base, controlnet = controlled(UNET)
    x = UNET.clip(T=4)
    with pytest.raises(ValueError, match=r"control maps \(2, 1, 3, 16, 16\) must be \(2, 1, 4, 16, 16\)"):
        controlnet(x, torch.rand(2), Conditioning(control=torch.rand(2, 1, 3, 16, 16)))


def test_dit_copy_takes_the_first_blocks():
    from test_backbones import DIT
    base, controlnet = controlled(DIT, blocks=1)
    assert len(controlnet.copy.blocks) == 1 and controlnet.copy.final is None
    x = DIT.clip(T=5)
    residuals = controlnet(x, torch.rand(2), text_cond(control=maps_for(x)))
    assert [tuple(r.shape) for r in residuals] == base.residual_shapes(x.shape)[:1]


# ----------------------------------------------------------------------------- extractors
def test_silhouette_is_the_rendered_shape_exactly():
    for color, shape, direction in (("blue", "triangle", "right"), ("white", "square", "up"),
                                    ("yellow", "circle", "left")):
        clip = Video(render(color, shape, direction, frames=6, size=24, start=None)).to_tensor()
        g = geometry(direction, 6, 24)
        x0, y0 = sum(g["x"]) / 2, sum(g["y"]) / 2
        steps = np.arange(6)
        expected = shape_masks(shape, x0 + g["step"][0] * steps, y0 + g["step"][1] * steps, g["radius"], 24, 24)
        got = silhouette(clip[None])[0, 0].numpy().astype(bool)
        assert np.array_equal(got, expected)


def test_silhouette_reads_the_background_from_the_border():
    # A grey frame with a darker square: the square is the subject, not the bright background.
    frames = np.full((2, 16, 16, 3), 180, np.uint8)
    frames[:, 4:9, 5:11] = 40
    got = silhouette(Video(frames).to_tensor()[None])[0, 0]
    expected = torch.zeros(2, 16, 16)
    expected[:, 4:9, 5:11] = 1
    assert torch.equal(got, expected)


def test_edges_are_one_thin_line_at_a_step_and_follow_colour():
    # A vertical step between columns 7 and 8, in pure blue on black (a luminance step of 0.11):
    # every edge pixel sits on the two columns beside the step, and every row has one.
    frames = np.zeros((1, 12, 16, 3), np.uint8)
    frames[:, :, 8:, 2] = 255
    got = edges(Video(frames).to_tensor()[None])[0, 0, 0]
    cols = torch.nonzero(got)[:, 1]
    assert set(cols.tolist()) <= {7, 8}
    assert (got.sum(1) >= 1).all() and (got.sum(1) <= 2).all()
    # A flat frame has no edges; a square's edges lie on its boundary ring.
    assert edges(torch.zeros(1, 3, 1, 12, 12)).sum() == 0
    square = np.zeros((1, 20, 20, 3), np.uint8)
    square[:, 6:14, 6:14] = 255
    ring = edges(Video(square).to_tensor()[None])[0, 0, 0].bool()
    inside = torch.zeros(20, 20, dtype=torch.bool)
    inside[5:15, 5:15] = True
    inside[8:12, 8:12] = False
    assert ring.any() and not (ring & ~inside).any()


def test_depth_and_custom_need_a_torchscript_extractor(tmp_path):
    clips = Video(render("red", "circle", "right", frames=3, size=16)).to_tensor()[None]
    with pytest.raises(ControlError, match="needs an extractor"):
        extract("depth", clips)
    with pytest.raises(ControlError, match="unknown control type 'pose'"):
        extract("pose", clips)
    with pytest.raises(ControlError, match="does not exist"):
        load_extractor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ControlError, match="is not a TorchScript model"):
        load_extractor(tmp_path / "junk.pt")

    class Red(torch.nn.Module):            # "depth" = the red channel: a known answer
        def forward(self, x):
            return x[:, :1] * 3.0 + 1.0

    torch.jit.save(torch.jit.script(Red()), str(tmp_path / "red.pt"))
    maps = extract("depth", clips, tmp_path / "red.pt")
    red = (clips[:, :1] + 1) / 2
    assert torch.allclose(maps, red, atol=1e-6)          # rescaled per clip to [0, 1]
    assert torch.allclose(depth(clips, load_extractor(tmp_path / "red.pt")), maps)
    # An exported program (torch.export, TorchScript's successor) serves as well.
    program = torch.export.export(Red(), (torch.rand(3, 3, 16, 16),))
    torch.export.save(program, str(tmp_path / "red.pt2"))
    assert torch.allclose(extract("depth", clips, tmp_path / "red.pt2"), maps, atol=1e-6)


# ----------------------------------------------------------------------------- training and loading
@pytest.fixture(scope="module")
def tiny_controlnet(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("tiny-controlnet")
    run = {"kind": "controlnet", "base": str(tiny_model), "control": "silhouette",
           "model": {"size": "controlnet", "overrides": {"hint_channels": 8}},
           "data": {"name": "shapes", "frames": 4, "size": 16},
           "train": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "lr": 1e-2}}
    before = weights_fingerprint(load_denoiser(tiny_model, device="cpu").network)
    files = {p.name: p.read_bytes() for p in sorted(load_denoiser(tiny_model).path.iterdir()) if p.is_file()}
    train(load_run_config(None, [f"train.out_dir={out}"], base=run), progress=False)
    return out, before, files


def test_controlnet_trains_under_its_base_schedule_at_its_own_times(tmp_path, tiny_model):
    """The schedule and parameterization come from the base (what each t means); how training
    draws and weighs t comes from the ControlNet's own config, not from the base's last stage.
    A run naming another parameterization is refused."""
    times = {"loss_weighting": "uniform", "time_distribution": "logit_normal", "logit_mean": -1.0}
    run = {"kind": "controlnet", "base": str(tiny_model), "control": "silhouette",
           "model": {"size": "controlnet", "overrides": {"hint_channels": 8}}, "diffusion": times,
           "data": {"name": "shapes", "frames": 4, "size": 16},
           "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1}}
    train(load_run_config(None, [f"train.out_dir={tmp_path / 'a'}"], base=run), progress=False)
    stored = read_config(resolve_checkpoint(tmp_path / "a"), kind="controlnet", required=("run",))["run"]
    base = load_denoiser(tiny_model, device="cpu").run.diffusion
    assert {k: stored["diffusion"][k] for k in times} == times
    assert {k: stored["diffusion"][k] for k in DiffusionConfig.SCHEDULE_FIELDS} == \
        {k: getattr(base, k) for k in DiffusionConfig.SCHEDULE_FIELDS}
    other = "x0" if base.parameterization != "x0" else "eps"
    with pytest.raises(ConfigError, match=f"'parameterization': \\('{other}', '{base.parameterization}'\\).*"
                                          "under its base's schedule"):
        train(load_run_config(None, [f"train.out_dir={tmp_path / 'b'}"],
                              base={**run, "diffusion": {"parameterization": other}}), progress=False)
    assert not (tmp_path / "b").exists()


def test_controlnet_training_moves_only_the_branch(tiny_controlnet, tiny_model):
    out, before, files = tiny_controlnet
    base = load_denoiser(tiny_model, device="cpu")
    assert weights_fingerprint(base.network) == before
    assert {p.name: p.read_bytes() for p in sorted(base.path.iterdir()) if p.is_file()} == files
    controlnet = load_controlnet(out, device="cpu")
    assert controlnet.base_fingerprint == vidiff.load(tiny_model, device="cpu").fingerprint()
    # Two steps at a high rate moved the zero projections off zero: the branch trained.
    assert any(p.abs().sum() > 0 for n, p in controlnet.named_parameters() if n.startswith("zeros."))
    assert controlnet.config.control == "silhouette" and controlnet.config.base_arch == "unet"


def test_a_controlnet_for_another_base_is_refused(tiny_controlnet, tiny_editor):
    out, _, _ = tiny_controlnet
    pipe = vidiff.load(tiny_editor, device="cpu")
    clip = Video(render("red", "circle", "right", frames=4, size=16))
    with pytest.raises(ValueError, match="was trained over .* this model .* has weights"):
        pipe.generate("a red circle moving right", control_from=clip, controlnet=str(out), steps=2)


def test_controlnet_generation_follows_the_maps_given(tiny_controlnet, tiny_model):
    out, _, _ = tiny_controlnet
    pipe = vidiff.load(tiny_model, device="cpu")
    clip = Video(render("red", "circle", "right", frames=4, size=16))
    maps = pipe.control_maps(clip, "silhouette")
    assert torch.equal(maps, silhouette(clip.to_tensor()[None])[0])
    kwargs = dict(prompt="a red circle moving right", steps=2, seed=3, controlnet=str(out))
    a = pipe.generate(control=maps, **kwargs)
    b = pipe.generate(control_from=clip, **kwargs)          # extracted: the same maps
    c = pipe.generate(control=1 - maps, **kwargs)
    plain = pipe.generate(prompt=kwargs["prompt"], steps=2, seed=3)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.frames, plain.frames)
    zero = pipe.generate(control=maps, control_scale=0.0, **kwargs)
    assert np.array_equal(zero.frames, plain.frames)
    with pytest.raises(ValueError, match="have 3 frames of 16x16; the request is 4 frames"):
        pipe.generate(control=maps[:, :3], **kwargs)
    with pytest.raises(ValueError, match="follows silhouette maps, not edges"):
        pipe.generate(control=maps, control_type="edges", **kwargs)


def test_controlnet_config_is_checked():
    with pytest.raises(ValueError, match="control type 'pose' is not one of"):
        ControlNetConfig(control="pose")
    with pytest.raises(ValueError, match="has 1-channel maps, not control_channels=3"):
        ControlNetConfig(control="edges", control_channels=3)
    assert dataclasses.replace(ControlNetConfig(control="custom", control_channels=3)).control_channels == 3


# ----------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-inputs")
    clip = render("red", "circle", "right", frames=4, size=16, start=(5.0, 8.0))
    Video(clip).save(root / "clip.mp4")
    maps = silhouette(Video(clip).to_tensor()[None])[0, 0].numpy()           # (T, H, W) in {0, 1}
    Video(np.repeat((maps[..., None] * 255).astype(np.uint8), 3, -1)).save(root / "maps")  # a frames folder
    Video(np.zeros((3, 16, 16, 3), np.uint8)).save(root / "short")
    (root / "broken.mp4").write_bytes(b"not a video")
    return root


def test_train_and_generate_commands_run_a_controlnet(tiny_model, cli_inputs, tmp_path, capsys):
    from vidiff.cli import main
    config = tmp_path / "cn.yaml"
    config.write_text(f"kind: controlnet\nbase: {tiny_model}\ncontrol: silhouette\nmodel: {{size: controlnet}}\n"
                      "data: {name: shapes, frames: 4, size: 16}\n")
    run = tmp_path / "run"
    assert main(["train", str(config), f"train.out_dir={run}", "train.steps=1", "train.batch_size=2",
                 "train.warmup_steps=1", "sample.steps=2"]) == 0
    assert Video.load(run / "samples" / "step_0000001.mp4").num_frames == 4      # maps above, videos below
    m = ["--model", str(tiny_model), "--controlnet", str(run), "--steps", "2"]
    for source in (["--control", str(cli_inputs / "maps")], ["--control-from", str(cli_inputs / "clip.mp4")]):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}.mp4"
        assert main(["generate", "--prompt", "a red circle moving left", *source, "--control-type", "silhouette",
                     "--control-scale", "0.8", "--control-range", "0,0.6", "--out", str(out), *m]) == 0
        assert Video.load(out).num_frames == 4
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--control", "{short}"], "the control maps have 3 frames of 16x16; the request is 4 frames of 16x16"),
    (["--control-from", "{clip}", "--control-type", "pose"], "argument --control-type: unknown control type 'pose'"),
    (["--control-from", "{clip}", "--control-type", "depth"], "--control-type depth extracts its maps with a model"),
    (["--control-from", "{broken}"], "cannot read control video"),
    (["--control", "{clip}", "--control-from", "{clip}"], "give --control MAPS or --control-from VIDEO, not both"),
    (["--control-type", "silhouette"], "--control-type, --controlnet need control maps"),
    (["--control-from", "{clip}", "--control-range", "0.7,0.2"], "must satisfy 0 <= START < END <= 1"),
    (["--control-from", "{clip}", "--control-range", "early"], "must be START,END"),
    (["--control-from", "{clip}", "--control-type", "edges"], "follows silhouette maps, not edges"),
    (["--control-from", "{clip}", "--frames", "8"], "control maps steer one clip of at most the training length"),
])
def test_bad_control_input_is_one_line_and_writes_nothing(tiny_model, tiny_controlnet, cli_inputs, tmp_path,
                                                          capsys, args, words):
    from vidiff.cli import main
    paths = {name: str(cli_inputs / f) for name, f in (("clip", "clip.mp4"), ("short", "short"),
                                                       ("broken", "broken.mp4"))}
    out = tmp_path / "out"
    argv = ["generate", "--prompt", "a red circle moving left", *[a.format(**paths) for a in args],
            "--model", str(tiny_model), "--controlnet", str(tiny_controlnet[0]), "--steps", "2",
            "--out", str(out / "o.mp4")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vidiff generate: error: ") and words in err, err
    assert not out.exists()


def test_a_controlnet_run_needs_its_base_and_control(tmp_path, tiny_model):
    from vidiff.train.run import build_trainer
    base = {"kind": "controlnet", "model": {"size": "controlnet"}, "data": {"name": "shapes", "frames": 4, "size": 16}}
    for extra, words in (({}, "kind controlnet needs base"),
                         ({"base": str(tiny_model)}, "control: None is not a control type"),
                         ({"base": str(tiny_model), "control": "depth"}, "control: depth needs extractor"),
                         ({"base": "no-such-model", "control": "edges"}, "unknown model 'no-such-model'")):
        with pytest.raises(ValueError, match=words):
            build_trainer(load_run_config(None, [f"train.out_dir={tmp_path}"], base={**base, **extra}), progress=False)


def test_a_dit_base_trains_and_runs_a_controlnet_end_to_end(tmp_path):
    # The run kind is backbone-blind: over a DiT base the branch is a copy of its first blocks.
    base_run = {"model": {"size": "dit-tiny"}, "data": {"name": "shapes", "frames": 4, "size": 16},
                "text": {"dim": 16, "depth": 1, "heads": 2},
                "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1}}
    train(load_run_config(None, [f"train.out_dir={tmp_path / 'base'}"], base=base_run), progress=False)
    run = {"kind": "controlnet", "base": str(tmp_path / "base"), "control": "edges",
           "model": {"size": "controlnet", "overrides": {"blocks": 1}},
           "data": {"name": "shapes", "frames": 4, "size": 16},
           "train": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "lr": 1e-2}}
    train(load_run_config(None, [f"train.out_dir={tmp_path / 'cn'}"], base=run), progress=False)
    controlnet = load_controlnet(tmp_path / "cn", device="cpu")
    assert controlnet.config.base_arch == "dit" and len(controlnet.copy.blocks) == 1
    pipe = vidiff.load(tmp_path / "base", device="cpu")
    clip = Video(render("red", "square", "right", frames=4, size=16))
    kwargs = dict(prompt="a red square moving right", steps=2, seed=0)
    steered = pipe.generate(control_from=clip, controlnet=str(tmp_path / "cn"), **kwargs)
    assert not np.array_equal(steered.frames, pipe.generate(**kwargs).frames)
