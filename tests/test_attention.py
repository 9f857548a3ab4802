"""Attention processors: every layer's kind, the token layout and sampling step processors see,
and scopes that restore the default on exit and belong to one thread."""
import dataclasses
import threading

import pytest
import torch

from test_backbones import DIT, TEXT_DIM, UNET, perturb, text_cond
from vidiff.diffusion import Schedule, sample
from vidiff.models.layers import (ATTENTION_KINDS, Attention, attention_processors,
                                  current_sampling_step, reset_sampling_step, sampling_step,
                                  sdpa_processor, set_sampling_step)
from vidiff.models.vae import VAE_MODELS, VideoVAE

pytestmark = pytest.mark.usefixtures("one_thread")

B, T = 2, 3


def recorder(calls: list):
    """A processor that records ``(call, q shape, k shape, attn)`` and computes what SDPA does."""
    def process(attn, q, k, v, mask, call):
        calls.append((call, tuple(q.shape), tuple(k.shape), attn))
        return sdpa_processor(attn, q, k, v, mask)
    return process


def zero_cross(attn, q, k, v, mask, call):
    return torch.zeros_like(q)


def only_cross(processor):
    return lambda name, module: processor if module.kind == "cross" else None


# UNet3D with attention at both levels of a non-square 16 x 32 clip: level 0 is a 16 x 32
# token grid, level 1 (after one downsampling) 8 x 16. VideoDiT with patch 2: an 8 x 16 clip
# is a 4 x 8 patch grid; block 0 factorized, block 1 full.
UNET_BOTH_LEVELS = dict(spatial_attention=(0, 1), cross_attention=(0, 1), temporal_attention=(0, 1))
CASES = [
    pytest.param(UNET, UNET_BOTH_LEVELS, (16, 32), {(B, T, 16, 32), (B, T, 8, 16)},
                 {"attn_s": "spatial", "attn_c": "cross", "attn_t": "temporal"}, id="unet"),
    pytest.param(DIT, dict(attention=("factorized", "full")), (8, 16), {(B, T, 4, 8)},
                 {"blocks.0.attn": "spatial", "blocks.0.attn_t": "temporal", "blocks.0.cross": "cross",
                  "blocks.1.attn": "full", "blocks.1.cross": "cross"}, id="dit"),
]


def tokens_of(kind: str, layout) -> tuple[int, int]:
    """(sequences, tokens per sequence) the queries of a layer of ``kind`` must have."""
    b, t, h, w = layout
    return {"spatial": (b * t, h * w), "temporal": (b * h * w, t), "cross": (b, t * h * w),
            "full": (b, t * h * w)}[kind]


@pytest.mark.parametrize("backbone, overrides, size, layouts, kinds", CASES)
def test_processors_see_each_layers_kind_and_token_layout(backbone, overrides, size, layouts, kinds):
    model = backbone.make(text_dim=TEXT_DIM, **overrides)
    perturb(model, backbone.temporal)
    x, t, cond = backbone.clip(B=B, T=T, H=size[0], W=size[1]), torch.rand(B), text_cond(B=B, L=5)
    with torch.no_grad():
        reference = model(x, t, cond)
    calls = []
    with attention_processors(model, lambda name, module: recorder(calls)) as installed:
        with torch.no_grad():
            out = model(x, t, cond)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, Attention)}
    assert set(installed) == set(modules) and len({c.name for c, *_ in calls}) == len(modules)
    assert torch.equal(out, reference)                       # the recorder computes what SDPA does
    assert {c.layout for c, *_ in calls} == layouts          # every level's grid appears
    for call, q, k, attn in calls:
        assert attn is modules[call.name] and call.kind == attn.kind and call.step is None
        # The kind follows from where the layer sits (the same names in both backbones) ...
        assert call.kind == next(kind for key, kind in kinds.items() if call.name.endswith(key))
        # ... and the layout is the grid its tokens come from.
        assert (q[0], q[2]) == tokens_of(call.kind, call.layout), call
        assert k[2] == (5 if call.kind == "cross" else q[2])  # cross: the 5 text tokens
    with pytest.raises(dataclasses.FrozenInstanceError):      # a processor cannot edit the call
        calls[0][0].step = 1


def test_the_autoencoders_attention_is_spatial_with_its_layout():
    # vae-tiny: 4x spatial and 4x temporal compression; the middle attention of the encoder
    # and of the decoder both run on the 2 latent frames of 4 x 4 cells of a 5-frame 16x16 clip.
    torch.manual_seed(0)
    vae = VideoVAE(VAE_MODELS["vae-tiny"]).eval()
    calls = []
    with attention_processors(vae, lambda name, module: recorder(calls)), torch.no_grad():
        vae(torch.rand(1, 3, 5, 16, 16) * 2 - 1, sample_posterior=False)
    assert [(c.name.split(".")[0], c.kind, c.layout) for c, *_ in calls] == [
        ("encoder", "spatial", (1, 2, 4, 4)), ("decoder", "spatial", (1, 2, 4, 4))]
    assert all(q[:1] + q[2:3] == (1 * 2, 4 * 4) for _, q, _, _ in calls)


def test_kinds_default_and_are_checked():
    assert Attention(8, 2).kind == "self"                   # e.g. the built-in text encoder
    assert Attention(8, 2, context_dim=4).kind == "cross"
    assert set(ATTENTION_KINDS) >= {"spatial", "temporal", "cross", "full", "self"}
    with pytest.raises(ValueError, match=r"attention kind 'spacial' is not one of \['spatial'"):
        Attention(8, 2, kind="spacial")


@pytest.mark.parametrize("backbone", [UNET, DIT], ids=["unet", "dit"])
def test_a_processor_changes_the_output_only_inside_its_scope(backbone):
    model = backbone.make(text_dim=TEXT_DIM)
    x, t, cond = backbone.clip(), torch.rand(2), text_cond()
    with torch.no_grad():
        reference = model(x, t, cond)
        with attention_processors(model, only_cross(zero_cross)) as installed:
            assert installed and all(n.endswith(("attn_c", "cross")) for n in installed)
            inside = model(x, t, cond)
        after = model(x, t, cond)
        # An exception inside the scope restores the default too.
        with pytest.raises(RuntimeError, match="boom"), attention_processors(model, only_cross(zero_cross)):
            raise RuntimeError("boom")
        again = model(x, t, cond)
        no_text = model(x, t, None)
    assert not torch.allclose(inside, reference, atol=1e-4)  # cross-attention did matter
    assert torch.equal(after, reference) and torch.equal(again, reference)
    assert not torch.allclose(no_text, inside, atol=1e-4)   # zeroed is not "no text": a real change


def test_scopes_nest_and_the_inner_one_wins():
    model = DIT.make(text_dim=TEXT_DIM)
    x, t, cond = DIT.clip(), torch.rand(2), text_cond()
    outer, inner = [], []
    with torch.no_grad():
        with attention_processors(model, lambda n, m: recorder(outer)):
            with attention_processors(model, lambda n, m: recorder(inner) if n == "blocks.0.attn" else None):
                model(x, t, cond)
            assert [c.name for c, *_ in inner] == ["blocks.0.attn"]
            assert "blocks.0.attn" not in {c.name for c, *_ in outer} and len(outer) == 5
            outer.clear()
            model(x, t, cond)
            assert "blocks.0.attn" in {c.name for c, *_ in outer}


def test_threads_running_one_model_keep_their_own_processors():
    model = UNET.make(text_dim=TEXT_DIM)
    x, t, cond = UNET.clip(), torch.rand(2), text_cond()
    with torch.no_grad():
        reference = model(x, t, cond)
        with attention_processors(model, only_cross(zero_cross)):
            zeroed = model(x, t, cond)
    both_inside = threading.Barrier(2, timeout=30)
    results, seen, errors = {}, {"zero": [], "record": []}, []

    def run(label: str, processor) -> None:
        try:
            with torch.no_grad(), attention_processors(model, only_cross(processor)):
                both_inside.wait()      # both scopes are open before either thread runs
                results[label] = model(x, t, cond)
                both_inside.wait()      # and stay open until both have run
        except Exception as e:          # surfaced below: a thread's exception is otherwise lost
            errors.append(e)

    def zero_and_note(attn, q, k, v, mask, call):
        seen["zero"].append(threading.get_ident())
        return zero_cross(attn, q, k, v, mask, call)

    def record_and_note(attn, q, k, v, mask, call):
        seen["record"].append(threading.get_ident())
        return sdpa_processor(attn, q, k, v, mask)

    threads = [threading.Thread(target=run, args=("zero", zero_and_note)),
               threading.Thread(target=run, args=("record", record_and_note))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    # (allclose: a new thread has its own OpenMP thread count, so sums may run in another order)
    assert not torch.allclose(zeroed, reference, atol=1e-4)
    assert torch.allclose(results["zero"], zeroed, atol=1e-6)
    assert torch.allclose(results["record"], reference, atol=1e-6)
    assert set(seen["zero"]) == {threads[0].ident} and set(seen["record"]) == {threads[1].ident}
    with torch.no_grad():                                    # and the main thread never saw either
        assert torch.equal(model(x, t, cond), reference)


def test_the_sampling_step_reaches_processors():
    model = DIT.make(text_dim=TEXT_DIM, depth=1)
    x, t, cond = DIT.clip(), torch.rand(2), text_cond()
    calls = []
    with attention_processors(model, lambda n, m: recorder(calls)), torch.no_grad():
        model(x, t, cond)
        with sampling_step(3):
            model(x, t, cond)
            token = set_sampling_step(4)
            model(x, t, cond)
            reset_sampling_step(token)
            assert current_sampling_step() == 3
            set_sampling_step(5)                             # undone by the scope's exit
        assert current_sampling_step() is None
        model(x, t, cond)
    per_pass = len(calls) // 4
    assert [c.step for c, *_ in calls] == [s for s in (None, 3, 4, None) for _ in range(per_pass)]


def test_a_sampling_loop_can_number_its_steps():
    # The pattern a pipeline uses: one scope around the sampler, advanced from its progress
    # callback (reported after each step), so each step's denoiser call sees its index.
    model = DIT.make(depth=1)
    steps_seen = []

    def denoiser(x_t, t, cond):
        return model(x_t, t, cond)

    def note(attn, q, k, v, mask, call):
        if not steps_seen or steps_seen[-1] != call.step:
            steps_seen.append(call.step)
        return sdpa_processor(attn, q, k, v, mask)

    noise = DIT.clip(B=1, T=2)
    with attention_processors(model, lambda n, m: note), sampling_step(0), torch.no_grad():
        sample(denoiser, noise, schedule=Schedule.from_name("cosine"), sampler="ddim", steps=4,
               callback=lambda info: set_sampling_step(info["step"] + 1))
    assert steps_seen == [0, 1, 2, 3]
    assert current_sampling_step() is None


@pytest.mark.parametrize("backbone", [UNET, DIT], ids=["unet", "dit"])
def test_gradient_checkpointing_recomputes_with_the_forwards_processors(backbone):
    # Backward recomputes checkpointed blocks after the scope has closed (and, on a GPU, on
    # autograd's own thread): the recomputation must still use the forward's processors.
    x, t, cond = backbone.clip(), torch.rand(2), text_cond()

    def zero_cross_at_step_2(attn, q, k, v, mask, call):    # the step must be carried too
        return (zero_cross if call.step == 2 else sdpa_processor)(attn, q, k, v, mask, call)
    grads = []
    for flag in (False, True):
        model = backbone.make(text_dim=TEXT_DIM, grad_checkpoint=flag).train()
        perturb(model, backbone.temporal)
        with attention_processors(model, only_cross(zero_cross_at_step_2)), sampling_step(2):
            loss = model(x, t, cond).square().mean()
        loss.backward()                                       # outside the scope
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape and torch.allclose(grads[0], grads[1], atol=1e-6)
