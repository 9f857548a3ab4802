"""Inversion, editing and restyling through the pipeline: exactness on Gaussian data, guidance-
aware inversion, attention injection and its scopes, the noise file and its fingerprint."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import vidiff
from vidiff.diffusion import Schedule, invert, sample, timesteps
from vidiff.diffusion.gaussian import GaussianDenoiser
from vidiff.eval.temporal import pooled_psnr
from vidiff.models.layers import Attention, attention_processors, sampling_step, sdpa_processor
from vidiff.pipelines.injection import AttentionStore, attention_probabilities, injected_steps
from vidiff.pipelines.inversion import INVERT_SPACING, INVERT_T_MIN, Inversion
from vidiff.pipelines.video import VideoPipeline
from vidiff.video import Video

pytestmark = pytest.mark.usefixtures("one_thread")
M, S = 0.2, 0.5                      # Gaussian data: x0 ~ N(M, S^2) per element
RED, BLUE = "a red circle moving right", "a blue circle moving right"


class GaussianNetwork(nn.Module):
    """The closed-form denoiser of Gaussian data as an x0-predicting network."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.gaussian = GaussianDenoiser(schedule, M, S)
        self.anchor = nn.Parameter(torch.zeros(1))          # a device and weights to fingerprint

    def check_shape(self, shape) -> None:
        pass

    def forward(self, x, t, cond=None):
        # x: (B, C, T, H, W), t: (B,) -> x0_hat (B, C, T, H, W)
        return self.gaussian(x.double(), t).to(x.dtype)


def gaussian_pipeline():
    schedule = Schedule.from_name("cosine")
    return VideoPipeline(GaussianNetwork(schedule), schedule, "x0", frames=3, height=4, width=4)


def gaussian_clip(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return M + S * torch.randn(3, 3, 4, 4, generator=g)                          # (3, T, H, W)


def round_trip_error(pipe, x0: torch.Tensor, steps: int, refine: int = 0) -> tuple[float, float]:
    """(max error of the inverted noise against the exact ODE state, max round-trip error) of
    DDIM inversion on the evenly spaced ("trailing") grid down to 0."""
    den, x = pipe.denoiser(1.0), x0[None].double()
    noise = invert(den, x, pipe.schedule, steps=steps, spacing="trailing", refine=refine)
    exact = pipe.network.gaussian.ode_state(pipe.schedule.t_max, pipe.network.gaussian.standardize(0.0, x0.double()))
    back = sample(den, noise, pipe.schedule, sampler="ddim", steps=steps, spacing="trailing")
    return float((noise[0] - exact).abs().max()), float((back[0] - x[0]).abs().max())


def slope(counts, errors) -> float:
    """Least-squares order of convergence: -d log(error) / d log(steps)."""
    x, y = np.log(counts), np.log(errors)
    return -float(np.polyfit(x, y, 1)[0])


def test_pipeline_inverts_on_a_floored_grid_and_regenerates_on_the_same():
    """vidiff invert's grid runs evenly down to INVERT_T_MIN, then 0 (the file records it), and
    generating from the noise walks the same grid: the noise is the library's inversion on it,
    and refinement (which inverts each sampling step of that grid) brings the clip back closer.
    A file written before the grid was recorded regenerates on the trailing grid it was made on."""
    pipe, x0 = gaussian_pipeline(), gaussian_clip()
    den, x = pipe.denoiser(1.0), x0[None].double()
    inversion = pipe.invert(x0, steps=40)
    assert (inversion.spacing, inversion.t_min) == (INVERT_SPACING, INVERT_T_MIN) == ("uniform", 0.05)
    grid = timesteps(pipe.schedule, 40, "uniform", t_min=0.05)
    assert grid[-2] == pytest.approx(0.05) and grid[-1] == 0 and len(grid) == 41
    assert torch.allclose(inversion.noise.double(), invert(den, x, pipe.schedule, steps=40, spacing="uniform",
                                                           t_min=0.05), atol=1e-5)
    errors = [float((pipe.generate_from_noise(pipe.invert(x0, steps=40, refine=k)).to_tensor()
                     - Video.from_tensor(x0).to_tensor()).abs().max()) for k in (0, 20)]
    assert errors[1] < 0.2 * errors[0], errors
    # Up to 20 steps the floored grid is the trailing one; a partial inversion halves the floor.
    short = pipe.invert(x0, steps=16)
    t_max = pipe.schedule.t_max
    assert short.t_min == pytest.approx(t_max / 16)
    assert torch.allclose(timesteps(pipe.schedule, 16, "uniform", t_min=t_max / 16),
                          timesteps(pipe.schedule, 16, "trailing"), rtol=0, atol=1e-12)
    assert pipe.invert(x0, steps=8, strength=0.06).t_min == pytest.approx(0.03)
    old = dataclasses.replace(inversion, spacing="trailing", t_min=0.001)
    assert torch.equal(pipe.generate_from_noise(old).to_tensor(),
                       Video.from_tensor(sample(den, old.noise.double(), pipe.schedule, sampler="ddim", steps=40,
                                                spacing="trailing")[0].float()).to_tensor())


def test_inversion_round_trip_on_gaussian_data_is_exact_up_to_first_order_discretisation():
    pipe, x0 = gaussian_pipeline(), gaussian_clip()
    counts = [16, 32, 64, 128]
    noise_errors, trip_errors = zip(*(round_trip_error(pipe, x0, n) for n in counts))
    # DDIM and its inversion are first order: the error halves as the steps double.
    assert 0.8 < slope(counts, noise_errors) < 1.3, noise_errors
    assert 0.8 < slope(counts, trip_errors) < 1.3, trip_errors
    assert trip_errors[-1] < 0.1 * S
    # Fixed-point refinement makes every inverse step the exact inverse of its sampling step
    # (not of the ODE: the noise keeps its discretisation error), converging geometrically.
    refined = [round_trip_error(pipe, x0, 16, refine=k)[1] for k in (4, 10, 20)]
    assert refined[0] < 0.2 * trip_errors[0] and refined[1] < 0.3 * refined[0] and refined[2] < 0.3 * refined[1]
    assert refined[2] < 5e-3 * trip_errors[0], (refined, trip_errors[0])


def test_inversion_checks_its_arguments():
    pipe, x0 = gaussian_pipeline(), gaussian_clip()
    for kwargs, words in [(dict(strength=1.5), r"strength must be in \[0, 1\]"), (dict(strength=0.0), "strength > 0"),
                          (dict(steps=0), "steps must be"), (dict(refine=-1), "refine must be"),
                          (dict(cfg_inversion="ddim"), "unknown cfg inversion"),
                          (dict(guidance=3.0), "unconditional"), (dict(prompt=RED), "unconditional")]:
        with pytest.raises(ValueError, match=words):
            pipe.invert(x0, **kwargs)
    with pytest.raises(ValueError, match="edits at most 3"):
        pipe.invert(torch.zeros(3, 4, 4, 4))


# ----------------------------------------------------------------------------- a tiny model
@pytest.fixture(scope="module")
def pipe(tiny_editor):
    """The tiny model with its weights shaken: two training steps leave its zero-initialised
    attention outputs near zero, and attention must matter for injection to."""
    pipe = vidiff.load(tiny_editor, device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.network.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return pipe


@pytest.fixture(scope="module")
def video():
    from vidiff.data.shapes import render
    return Video(render("red", "circle", "right", frames=4, size=16, start=(5.0, 8.0)))


def levels(a: Video, b: Video) -> int:
    return int(np.abs(a.frames.astype(int) - b.frames.astype(int)).max())


def test_negative_prompt_inversion_reproduces_guidance_1_and_plain_inversion_does_not(pipe, video):
    plain = pipe.generate_from_noise(pipe.invert(video, RED, steps=8))
    negative = pipe.generate_from_noise(pipe.invert(video, RED, steps=8, guidance=5.0, cfg_inversion="negative"))
    guided = pipe.generate_from_noise(pipe.invert(video, RED, steps=8, guidance=5.0, cfg_inversion="none"))
    assert levels(negative, plain) <= 1           # the guided prediction equals the conditional one
    assert levels(guided, plain) > 1              # guidance changed what plain inversion returns


def test_null_text_optimisation_pulls_the_guided_run_back_onto_the_inversion(pipe, video):
    plain = pipe.invert(video, RED, steps=6)
    target = pipe.generate_from_noise(plain).frames.astype(np.float64)      # the guidance-1 run
    def error(inversion) -> float:
        return float(np.mean((pipe.generate_from_noise(inversion).frames - target) ** 2))
    errors = {"none": error(pipe.invert(video, RED, steps=6, guidance=2.0))}
    for iterations in (1, 20):
        nti = pipe.invert(video, RED, steps=6, guidance=2.0, cfg_inversion="nti", nti_iterations=iterations)
        assert nti.null_text.shape[0] == 6 and torch.equal(nti.noise, plain.noise)
        errors[iterations] = error(nti)
    # (measured 3900, 3071 and 1756: a shaken random network leaves the one null token little room)
    assert errors[20] < 0.75 * errors[1] and errors[20] < 0.6 * errors["none"], errors


def test_identical_prompts_with_full_injection_give_the_reconstruction_back(pipe, video):
    reconstruction = pipe.generate_from_noise(pipe.invert(video, RED, steps=6, guidance=3.0, cfg_inversion="negative"))
    same = pipe.edit(video, RED, RED, inject=1.0, steps=6, guidance=3.0)
    assert levels(same, reconstruction) <= 1
    assert pooled_psnr(same.frames, video.frames) > pooled_psnr(reconstruction.frames, video.frames) - 0.1
    edited = pipe.edit(video, RED, BLUE, inject=0.0, steps=6, guidance=3.0)
    assert levels(edited, reconstruction) > 1      # another prompt does change the clip
    assert pipe.edit(video, RED, BLUE, strength=0.0) is video


def test_injection_changes_attention_and_leaving_its_scope_restores_the_processors(pipe):
    net = pipe.network
    x, t = torch.randn(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.full((1,), 0.5)
    red, blue = pipe.encode([RED]), pipe.encode([BLUE])
    store = AttentionStore(steps=1)
    with torch.no_grad(), sampling_step(0):
        reference = net(x, t, blue)
        with store.recording(net):
            recorded = net(x, t, red)
        recorded_layers = {name for name, _ in store.saved}
        assert {m.kind for n, m in net.named_modules() if n in recorded_layers} == {"spatial", "temporal", "cross"}
        with store.replaying(net):
            injected = net(x, t, blue)
        after = net(x, t, blue)
        with pytest.raises(RuntimeError, match="boom"), store.replaying(net):
            raise RuntimeError("boom")
        again = net(x, t, blue)
        assert torch.allclose(net(x, t, red), recorded, atol=1e-5)   # recording computes what SDPA does
    assert not torch.allclose(injected, reference, atol=1e-4)           # the source's attention mattered
    assert torch.equal(after, reference) and torch.equal(again, reference)
    # Outside the steps the store holds, a replaying scope changes nothing.
    with torch.no_grad(), sampling_step(1), store.replaying(net):
        assert torch.equal(net(x, t, blue), reference)


def test_replayed_maps_use_the_edits_values_and_kv_the_sources():
    attn = Attention(8, 2, kind="spatial")
    q, k, v = (torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    probs = attention_probabilities(q, k, None)
    assert torch.allclose(probs @ v, sdpa_processor(attn, q, k, v, None), atol=1e-6)
    mask = torch.tensor([True, True, False, True, False])[None, None, None]
    assert torch.allclose(attention_probabilities(q, k, mask) @ v, sdpa_processor(attn, q, k, v, mask), atol=1e-6)
    holder = nn.ModuleDict({"attn": attn})
    for mode in ("maps", "kv"):
        store = AttentionStore(1, mode=mode)
        x = torch.randn(2, 5, 8)
        with torch.no_grad(), sampling_step(0):
            with store.recording(holder):
                source = attn(x)
            with store.replaying(holder):
                same = attn(x)
                other = attn(x + 1)
        assert torch.allclose(same, source, atol=1e-6) and not torch.allclose(other, source, atol=1e-3)
    with pytest.raises(ValueError, match=r"inject \(tau\) must be"):
        injected_steps(1.5, 10)
    with pytest.raises(ValueError, match="unknown injection mode"):
        AttentionStore(1, mode="both")
    with attention_processors(holder, lambda n, m: None) as installed:
        assert installed == {}


def test_the_noise_file_keeps_everything_and_refuses_another_model(pipe, video, tmp_path):
    inversion = pipe.invert(video, RED, steps=4, guidance=2.0, cfg_inversion="nti", nti_iterations=1)
    path = inversion.save(tmp_path / "noise.safetensors")
    loaded = pipe.load_noise(path)
    assert torch.equal(loaded.noise, inversion.noise) and torch.equal(loaded.null_text, inversion.null_text)
    assert (loaded.prompt, loaded.steps, loaded.guidance, loaded.cfg_inversion, loaded.sampler) == \
           (RED, 4, 2.0, "nti", "ddim")
    assert loaded.model == pipe.fingerprint() and [p.name for p in tmp_path.iterdir()] == ["noise.safetensors"]
    assert levels(pipe.generate_from_noise(path), pipe.generate_from_noise(inversion)) == 0
    other = vidiff.load(pipe.source, device="cpu")
    with torch.no_grad():
        next(other.network.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match=f"fingerprint {pipe.fingerprint()}.*fingerprint {other.fingerprint()}"):
        other.load_noise(path)
    with pytest.raises(ValueError, match="cannot be used with model"):
        other.generate_from_noise(inversion)


@pytest.mark.parametrize("content, words", [
    (b"not a safetensors file at all" * 4, "not a readable noise file"),
    (b"", "not a readable noise file"),
    (None, "no vidiff noise file"),
    ("truncate", "not a readable noise file"),
])
def test_a_corrupt_noise_file_is_refused(pipe, video, tmp_path, content, words):
    from safetensors.torch import save_file
    path = tmp_path / "bad.safetensors"
    if content is None:
        save_file({"noise": torch.zeros(1, 3, 4, 16, 16)}, str(path))
    elif content == "truncate":
        good = pipe.invert(video, RED, steps=2).save(tmp_path / "good.safetensors").read_bytes()
        path.write_bytes(good[:len(good) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=words):
        Inversion.load(path)


def test_editing_refuses_what_it_cannot_do(pipe, video):
    cases = [
        (dict(strength=-0.1), "strength must be in"),
        (dict(inject=1.5), r"inject \(tau\) must be"),
        (dict(source_prompt="a purple blob moving right"), "does not know: purple, blob"),
        (dict(prompt="   "), "must be non-blank"),
        (dict(injection="values"), "unknown injection"),
    ]
    for kwargs, words in cases:
        args = dict(source_prompt=RED, prompt=BLUE) | kwargs
        with pytest.raises(ValueError, match=words):
            pipe.edit(video, **args)
    with pytest.raises(ValueError, match="edits at most 4"):
        pipe.edit(Video(np.zeros((6, 16, 16, 3), np.uint8)), RED, BLUE)
    with pytest.raises(ValueError, match="does not fit this model"):
        pipe.edit(Video(np.zeros((4, 18, 18, 3), np.uint8)), RED, BLUE)
    unconditional = VideoPipeline(pipe.network, pipe.schedule, pipe.parameterization, None, frames=4, height=16, width=16)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.edit(video, RED, BLUE)


def test_restyle_is_sdedit(pipe, video):
    kept = pipe.restyle(video, BLUE, strength=0.0)
    assert np.array_equal(kept.frames, video.frames)
    near = pipe.restyle(video, BLUE, strength=0.2, steps=4, seed=3)
    far = pipe.restyle(video, BLUE, strength=1.0, steps=4, seed=3)
    assert pooled_psnr(near.frames, video.frames) > pooled_psnr(far.frames, video.frames)
    assert levels(pipe.restyle(video, BLUE, strength=0.2, steps=4, seed=3), near) == 0
    two = pipe.restyle(video, BLUE, strength=0.5, steps=2, samples=2)
    assert len(two) == 2 and levels(two[0], two[1]) > 0
    with pytest.raises(ValueError, match="strength must be in"):
        pipe.restyle(video, BLUE, strength=1.2)
