"""Per-image batched augmentation and mixup/cutmix: real tensors, every knob, CPU (+ CUDA)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from trainables import augment
from trainables.augment import AugmentConfig, Augmenter, mix_batch
from trainables.errors import ConfigError
from trainables.recipe import Recipe

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def images(b: int = 8, c: int = 3, size: int = 16, seed: int = 1, device: str = "cpu",
           ) -> torch.Tensor:
    """Random [0, 1] images: every pixel distinct, so any move is visible."""
    return torch.rand(b, c, size, size, generator=gen(seed)).to(device)


def same_image(b: int = 8, c: int = 3, size: int = 16) -> torch.Tensor:
    return images(1, c, size).expand(b, -1, -1, -1).contiguous()


def aug(x: torch.Tensor, seed: int = 0, **knobs) -> torch.Tensor:
    return Augmenter(AugmentConfig(**knobs))(x, gen(seed, x.device.type))


def pairwise_different(out: torch.Tensor) -> bool:
    return all(not torch.equal(out[i], out[j])
               for i, j in itertools.combinations(range(len(out)), 2))


# -- config --------------------------------------------------------------------------------------

def test_config_from_recipe_reads_the_aug_knobs():
    recipe = Recipe.from_dict({"aug_crop": "random_resized_crop", "aug_crop_scale_min": 0.5,
                               "aug_hflip": 0.5, "aug_vflip": 0.25, "aug_rotation": 10.0,
                               "aug_color_jitter": 0.3, "aug_random_erasing": 0.2})
    cfg = AugmentConfig.from_recipe(recipe)
    assert cfg == AugmentConfig(crop="random_resized_crop", crop_padding=recipe.aug_crop_padding,
                                crop_scale_min=0.5, hflip=0.5, vflip=0.25, rotation=10.0,
                                color_jitter=0.3, random_erasing=0.2)
    assert cfg.enabled


def test_enabled_only_when_some_transform_does_something():
    assert not AugmentConfig().enabled
    assert not AugmentConfig(crop="pad_crop", crop_padding=0).enabled
    assert AugmentConfig(crop="pad_crop", crop_padding=2).enabled
    assert AugmentConfig(random_erasing=0.1).enabled


def test_bad_config_and_inputs_name_the_rule():
    with pytest.raises(ConfigError, match="knob 'aug_crop': must be one of"):
        AugmentConfig(crop="center")
    with pytest.raises(ConfigError, match=r"knob 'aug_hflip': must be in \[0, 1\], got 1.5"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Augmenter(AugmentConfig(hflip=1.0))(torch.rand(3, 8, 8), gen())


def test_all_off_is_identity():
    x = images()
    assert aug(x) is x
    assert torch.equal(aug(x, hflip=0.0, vflip=0.0, rotation=0.0, color_jitter=0.0,
                           random_erasing=0.0), x)


# -- flips ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("knob,dim", [("hflip", -1), ("vflip", -2)])
def test_flip_probability_one_flips_every_image(knob, dim):
    x = images()
    assert torch.equal(aug(x, **{knob: 1.0}), x.flip(dim))


@pytest.mark.parametrize("knob,dim", [("hflip", -1), ("vflip", -2)])
def test_flip_half_flips_about_half_per_image(knob, dim):
    x = images(400, 1, 8)
    out = aug(x, **{knob: 0.5})
    flipped = (out == x.flip(dim)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept)  # each image is either flipped or untouched
    assert 0.35 * 400 < flipped.sum() < 0.65 * 400
    assert flipped[:16].any() and not flipped[:16].all()  # mixed inside one small batch


# -- crops ---------------------------------------------------------------------------------------

def test_pad_crop_output_is_a_crop_of_the_zero_padded_input():
    p, size = 3, 12
    x = images(16, 3, size)
    out = aug(x, crop="pad_crop", crop_padding=p)
    assert out.shape == x.shape
    padded = F.pad(x, (p, p, p, p))
    offsets = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + size, dx:dx + size])]
        assert found, f"image {i} is not a crop of its padded original"
        offsets.append(found[0])
    assert len(set(offsets)) > 3  # offsets are drawn per image


def test_random_resized_crop_keeps_shape_and_differs_per_image():
    x = same_image(8, 3, 16)
    out = aug(x, crop="random_resized_crop", crop_scale_min=0.3)
    assert out.shape == x.shape
    assert not torch.allclose(out[0], x[0])
    assert pairwise_different(out)


def test_random_resized_crop_full_area_and_square_is_nearly_identity(monkeypatch):
    # scale 1 and an aspect ratio of 1 must sample the image onto itself (theta = identity).
    monkeypatch.setattr(augment, "_RRC_RATIO", (1.0, 1.0))
    x = images(4, 3, 16)
    out = aug(x, crop="random_resized_crop", crop_scale_min=1.0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


# -- rotation and colour -------------------------------------------------------------------------

def test_rotation_changes_pixels_and_differs_per_image():
    x = same_image(8, 3, 16)
    out = aug(x, rotation=30.0)
    assert not torch.allclose(out, x, atol=1e-3)
    assert pairwise_different(out)


def test_rotation_with_flip_in_one_resampling_still_flips():
    # hflip folded into the affine matrix: a tiny rotation of a flipped image ~ the flipped image.
    x = images(4, 1, 32)
    out = aug(x, rotation=1e-4, hflip=1.0)
    torch.testing.assert_close(out, x.flip(-1), atol=1e-3, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_differs_per_image(channels):
    x = same_image(8, channels, 16)
    out = aug(x, color_jitter=0.5)
    assert not torch.allclose(out, x)
    assert pairwise_different(out)
    assert out.min() >= 0 and out.max() <= 1


def test_color_jitter_moves_image_statistics_per_image():
    x = same_image(64, 3, 16) * 0.5 + 0.25  # mid-range: brightness moves the mean
    out = aug(x, color_jitter=0.8)
    means = out.mean(dim=(1, 2, 3))
    assert means.std() > 0.02


# -- erasing -------------------------------------------------------------------------------------

def test_erasing_probability_one_erases_one_rectangle_per_image():
    size = 32
    x = torch.full((16, 3, size, size), 0.5)
    out = aug(x, random_erasing=1.0)
    changed = (out != x).any(1)  # (B, H, W)
    for i in range(len(x)):
        ys, xs = torch.nonzero(changed[i], as_tuple=True)
        assert len(ys) > 0, f"image {i} was not erased"
        box = changed[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert box.all(), f"image {i}: erased pixels are not a rectangle"
        assert box.numel() <= 0.4 * size * size
    assert ((out >= 0) & (out <= 1)).all()


def test_erasing_probability_half_erases_some_images_only():
    x = torch.full((32, 1, 16, 16), 0.5)
    erased = (aug(x, random_erasing=0.5) != x).flatten(1).any(1)
    assert erased.any() and not erased.all()


# -- whole pipeline ------------------------------------------------------------------------------

FULL = dict(crop="pad_crop", crop_padding=2, hflip=0.5, vflip=0.5, rotation=15.0,
            color_jitter=0.4, random_erasing=0.5)


@pytest.mark.parametrize("knobs", [FULL, dict(FULL, crop="random_resized_crop",
                                               crop_scale_min=0.35)])
def test_same_seed_same_output_different_seed_different(knobs):
    x = images(16, 3, 16)
    torch.testing.assert_close(aug(x, 7, **knobs), aug(x, 7, **knobs), atol=0, rtol=0)
    assert not torch.equal(aug(x, 7, **knobs), aug(x, 8, **knobs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 16), (1, 32), (3, 64)])
@pytest.mark.parametrize("crop", ["pad_crop", "random_resized_crop"])
def test_shape_dtype_device_and_range_preserved(device, dtype, channels, size, crop):
    x = images(4, channels, size, device=device).to(dtype)
    out = aug(x, **dict(FULL, crop=crop, crop_scale_min=0.35))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


# -- mixup / cutmix ------------------------------------------------------------------------------

def partners(targets: torch.Tensor) -> torch.Tensor:
    """With y = arange(B) and B classes, row i's other nonzero class is i's partner."""
    t = targets.clone()
    t.fill_diagonal_(0)
    has = t.sum(1) > 0
    return torch.where(has, t.argmax(1), torch.arange(len(t), device=t.device))


def test_mix_off_returns_one_hot_and_same_images():
    x, y = images(8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixed, t = mix_batch(x, y, 4, 0.0, 0.0, gen())
    assert mixed is x
    assert torch.equal(t, F.one_hot(y, 4).float())


@pytest.mark.parametrize("device", DEVICES)
def test_mixup_images_are_the_label_weighted_mixture(device):
    b = 16
    x, y = images(b, 3, 8, device=device), torch.arange(b, device=device)
    mixed, t = mix_batch(x, y, b, 0.4, 0.0, gen(0, device))
    assert t.shape == (b, b) and t.dtype == x.dtype
    torch.testing.assert_close(t.sum(1), torch.ones(b, device=device))
    j = partners(t)
    i = torch.arange(b, device=device)
    lam = t[i, i][:, None, None, None]
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[j])
    assert len(set(t[i, i].tolist())) > 1  # the weight is drawn per image
    assert (t[i, i] < 1).any()


@pytest.mark.parametrize("device", DEVICES)
def test_cutmix_pixels_come_from_the_pair_and_labels_match_pasted_area(device):
    b, size = 16, 16
    x, y = images(b, 3, size, device=device), torch.arange(b, device=device)
    mixed, t = mix_batch(x, y, b, 0.0, 1.0, gen(0, device))
    torch.testing.assert_close(t.sum(1), torch.ones(b, device=device))
    j = partners(t)
    from_self = (mixed == x).all(1)
    from_partner = (mixed == x[j]).all(1)
    assert (from_self | from_partner).all()  # every pixel is one image's or the other's
    for i in range(b):
        if j[i] == i:
            continue
        pasted = from_partner[i] & ~from_self[i]
        assert abs(pasted.float().mean().item() - t[i, j[i]].item()) < 1e-6
        ys, xs = torch.nonzero(pasted, as_tuple=True)
        if len(ys):
            assert pasted[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # a rectangle
    assert (t.diagonal() < 1).any()


def test_mixup_and_cutmix_both_on_pick_one_per_batch():
    b = 8
    x, y = images(b, 1, 8), torch.arange(b)
    modes = set()
    for seed in range(12):
        mixed, t = mix_batch(x, y, b, 1.0, 1.0, gen(seed))
        j = partners(t)
        cut = ((mixed == x) | (mixed == x[j])).all()
        modes.add("cutmix" if cut else "mixup")
        torch.testing.assert_close(t.sum(1), torch.ones(b))
    assert modes == {"cutmix", "mixup"}


def test_mix_is_seeded():
    x, y = images(8), torch.arange(8) % 3
    a = mix_batch(x, y, 3, 0.4, 1.0, gen(3))
    b = mix_batch(x, y, 3, 0.4, 1.0, gen(3))
    c = mix_batch(x, y, 3, 0.4, 1.0, gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
