"""Conditioning: batch concatenation (with token padding), null versions, text replacement for
negative prompts, construction checks, device/dtype moves and ``map``."""
import pytest
import torch

from vidiff.conditioning import Conditioning


def ramp(*shape, start: float = 0.0) -> torch.Tensor:
    """Distinct known values ``start, start + 1, ...`` in the given shape."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n, dtype=torch.float32).reshape(shape) + start


def frames(B: int, T: int = 3) -> dict:
    mask = torch.zeros(B, 1, T, 2, 2)
    mask[:, :, 0] = 1
    return dict(known=ramp(B, 2, T, 2, 2), mask=mask, known_noise=torch.full((B,), 0.3))


# --------------------------------------------------------------------------- cat
def test_cat_pads_text_of_different_lengths_with_zeros_and_false_mask():
    a = Conditioning(text=ramp(2, 3, 4, start=1.0),
                     text_mask=torch.tensor([[True, True, True], [True, True, False]]),
                     drop_text=torch.tensor([True, False]), frame_stride=torch.tensor([1.0, 2.0]))
    # b has a longer sequence, no text_mask (every token real) and no drop_text (not dropped)
    b = Conditioning(text=ramp(1, 5, 4, start=100.0), frame_stride=torch.tensor([3.0]))
    out = a.cat(b)
    assert out.text.shape == (3, 5, 4)
    assert torch.equal(out.text[:2, :3], a.text)
    assert torch.equal(out.text[:2, 3:], torch.zeros(2, 2, 4))
    assert torch.equal(out.text[2:], b.text)
    assert out.text_mask.dtype == torch.bool
    assert out.text_mask.tolist() == [[True, True, True, False, False],
                                      [True, True, False, False, False],
                                      [True] * 5]
    assert out.drop_text.tolist() == [True, False, False]
    assert out.frame_stride.tolist() == [1.0, 2.0, 3.0]
    # the other order pads the other side
    rev = b.cat(a)
    assert torch.equal(rev.text[1:, :3], a.text) and not rev.text_mask[1:, 3:].any()


def test_cat_pads_text_next_to_every_other_field():
    a = Conditioning(text=ramp(1, 2, 4), text_pooled=ramp(1, 6), low_res=ramp(1, 2, 3, 1, 1),
                     control=ramp(1, 1, 3, 2, 2), **frames(1))
    b = a.with_text_of(Conditioning(text=ramp(1, 4, 4, start=50.0), text_pooled=ramp(1, 6, start=9.0)))
    c = a.null(text=True, frames=True)
    out = a.cat(b, c)                                         # three sides at once
    assert out.batch_size == 3 and out.text.shape == (3, 4, 4)
    assert out.text_mask.tolist() == [[True, True, False, False], [True] * 4, [True, True, False, False]]
    for name in ("known", "mask", "known_noise", "low_res", "control", "text_pooled"):
        assert torch.equal(getattr(out, name), torch.cat([getattr(p, name) for p in (a, b, c)])), name
    assert out.drop_text.tolist() == [False, False, True]


def test_cat_rejects_fields_set_on_one_side_and_mismatched_shapes():
    text = Conditioning(text=ramp(1, 2, 4))
    with pytest.raises(ValueError, match="'known'"):
        text.cat(text.replace(**frames(1)))
    with pytest.raises(ValueError, match="'text'"):
        text.cat(Conditioning(frame_stride=torch.ones(1)))
    with pytest.raises(ValueError, match="'text'.*shapes"):
        text.cat(Conditioning(text=ramp(1, 2, 5)))           # token widths differ
    with pytest.raises(ValueError, match="'known'.*shapes"):
        Conditioning(**frames(1, T=3)).cat(Conditioning(**frames(1, T=4)))
    # drop_text is implicit: set on one side only is fine
    out = text.cat(text.replace(drop_text=torch.tensor([True])))
    assert out.drop_text.tolist() == [False, True]
    # and a conditioning without any field concatenates to itself
    assert Conditioning().cat(Conditioning()).fields_set() == ()


# --------------------------------------------------------------------------- null / with_text_of
def test_null_text_and_frames():
    cond = Conditioning(text=ramp(2, 3, 4), frame_stride=torch.tensor([1.0, 2.0]),
                        low_res=ramp(2, 2, 3, 1, 1), **frames(2))
    text_off = cond.null(text=True)
    assert text_off.drop_text.tolist() == [True, True]
    for name in ("text", "known", "mask", "known_noise", "frame_stride", "low_res"):
        assert getattr(text_off, name) is getattr(cond, name), name
    both = cond.null(text=True, frames=True)
    assert both.drop_text.tolist() == [True, True]
    assert torch.equal(both.known, torch.zeros_like(cond.known))
    assert torch.equal(both.mask, torch.zeros_like(cond.mask))
    assert torch.equal(both.known_noise, torch.zeros(2))      # what "no known frames" means
    assert both.frame_stride is cond.frame_stride and both.low_res is cond.low_res
    frames_only = cond.null(text=False, frames=True)
    assert frames_only.drop_text is None and frames_only.text is cond.text and not frames_only.mask.any()
    # nothing to forget
    assert Conditioning().null(text=True, frames=True) == Conditioning()
    assert Conditioning(text=ramp(1, 2, 4)).null(frames=True).known is None


def test_with_text_of_replaces_only_the_text_fields():
    cond = Conditioning(text=ramp(2, 3, 4), text_mask=torch.ones(2, 3, dtype=torch.bool),
                        text_pooled=ramp(2, 6), drop_text=torch.tensor([True, False]),
                        frame_stride=torch.tensor([1.0, 2.0]), control=ramp(2, 1, 3, 2, 2), **frames(2))
    negative = Conditioning(text=ramp(2, 5, 4, start=7.0), text_mask=torch.ones(2, 5, dtype=torch.bool),
                            text_pooled=ramp(2, 6, start=3.0))
    out = cond.with_text_of(negative)
    for name in ("text", "text_mask", "text_pooled"):
        assert getattr(out, name) is getattr(negative, name), name
    assert out.drop_text is None                             # the negative prompt's own rows are not dropped
    for name in ("known", "mask", "known_noise", "frame_stride", "control"):
        assert getattr(out, name) is getattr(cond, name), name
    # one negative prompt for every row
    one = Conditioning(text=ramp(1, 5, 4), text_pooled=ramp(1, 6))
    out = cond.with_text_of(one)
    assert out.text.shape == (2, 5, 4) and torch.equal(out.text[1], one.text[0])
    assert torch.equal(out.text_pooled, one.text_pooled.expand(2, 6))
    # a negative without text is the null text
    null = cond.with_text_of(Conditioning(frame_stride=torch.ones(2)))
    assert null.drop_text.tolist() == [True, True] and null.text is cond.text
    with pytest.raises(ValueError, match="batch size 3; expected 1 or 2"):
        cond.with_text_of(Conditioning(text=ramp(3, 5, 4)))


# --------------------------------------------------------------------------- checks
def test_construction_checks_name_the_fields():
    with pytest.raises(ValueError, match=r"batch size.*'text': 2.*'frame_stride': 3"):
        Conditioning(text=ramp(2, 3, 4), frame_stride=torch.ones(3))
    with pytest.raises(ValueError, match="'known' and 'mask' must be given together"):
        Conditioning(known=ramp(1, 2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"text_mask \(2, 4\) must be \(B, L\).*\(2, 3, 4\)"):
        Conditioning(text=ramp(2, 3, 4), text_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_mask"):
        Conditioning(text_mask=torch.ones(2, 4, dtype=torch.bool))
    cond = Conditioning(text=ramp(2, 3, 4))
    cond.check_batch(2)
    Conditioning().check_batch(5)
    with pytest.raises(ValueError, match=r"batch size 2 \(fields \['text'\]\) but the noise has 3"):
        cond.check_batch(3, "the noise")


def test_to_and_map():
    cond = Conditioning(text=ramp(2, 3, 4), text_mask=torch.ones(2, 3, dtype=torch.bool),
                        drop_text=torch.tensor([True, False]), **frames(2))
    half = cond.to(dtype=torch.float16)
    assert half.text.dtype == torch.float16 and half.known.dtype == torch.float16
    assert half.mask.dtype == torch.float16 and half.known_noise.dtype == torch.float16
    assert half.text_mask.dtype == torch.bool and half.drop_text.dtype == torch.bool
    assert torch.equal(half.text.float(), cond.text)
    assert cond.to("cpu").text.device.type == "cpu" and cond.to("cpu").text.dtype == torch.float32
    assert cond.device.type == "cpu" and Conditioning().device is None
    row = cond.map(lambda x: x[1:])
    assert row.batch_size == 1 and row.fields_set() == cond.fields_set()
    assert torch.equal(row.known, cond.known[1:]) and row.drop_text.tolist() == [False]
