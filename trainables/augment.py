"""Augmentation knobs -> per-image random transforms, batched on the training device.

Approach: every transform is a batched tensor op (``torch.where`` masks, ``gather``,
``F.affine_grid`` + ``F.grid_sample``, broadcast arithmetic) applied to a whole ``(B, C, H, W)``
batch that already lives on the training device, with *per-image* random parameters drawn from a
``torch.Generator`` on that device. This follows KellerJordan/cifar10-airbench: no DataLoader
workers, no Python loop over images, no host<->device copy, and no device sync (nothing calls
``.item()``). ``torchvision.transforms.v2`` applied to a batched tensor draws ONE parameter per
call, so the whole batch would get the same crop, flip and angle; per-image parameters from it
mean one call per sample in DataLoader workers on the CPU (benchmark 2 compares the two).

Order (as torchvision pipelines usually compose them): crop -> flips -> rotation -> colour ->
erasing, then a clamp to [0, 1]. ``random_resized_crop``, the flips and the rotation are folded into
ONE affine matrix per image when a resampling happens anyway (one ``grid_sample`` pass, one
interpolation); otherwise flips are exact index flips. A transform whose knob is off draws nothing
and costs nothing. Images are expected in [0, 1], before normalisation.

Random erasing fills its rectangle with uniform noise in [0, 1] (torchvision's ``value="random"``):
"0 after normalisation" would need the dataset mean, which this stage, running before
normalisation, does not know, and noise does not teach the model a constant-colour patch.

Mixup / cutmix (``mix_batch``) work on the batch and its labels and return soft targets; like timm,
when both are on, one of the two is picked per batch, with probability 0.5. The mixing weight (and
the cutmix box) is drawn per image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainables.errors import ConfigError
from trainables.recipe import KNOBS

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
# torchvision RandomResizedCrop / RandomErasing defaults.
_RRC_RATIO = (3 / 4, 4 / 3)
_ERASE_AREA = (0.02, 0.33)
_ERASE_RATIO = (0.3, 3.3)


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation knobs of a Recipe, with the Recipe's meaning and units.

    ``crop_padding`` in pixels per side (pad_crop); ``crop_scale_min`` the smallest kept area
    fraction (random_resized_crop); ``hflip`` / ``vflip`` / ``random_erasing`` probabilities per
    image; ``rotation`` the max angle in degrees; ``color_jitter`` the strength s of brightness,
    contrast and saturation factors uniform in [1-s, 1+s].
    """

    crop: str = "none"
    crop_padding: int = 0
    crop_scale_min: float = 1.0
    hflip: float = 0.0
    vflip: float = 0.0
    rotation: float = 0.0
    color_jitter: float = 0.0
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        # the rules are the Recipe knobs' (aug_<field>): one place for every range
        for f in dataclasses.fields(self):
            try:
                KNOBS[f"aug_{f.name}"].coerce(getattr(self, f.name))
            except ConfigError as e:
                raise e.at("AugmentConfig") from None

    @classmethod
    def from_recipe(cls, recipe: Any) -> AugmentConfig:
        """Read the ``aug_*`` knobs of a Recipe (or anything with those attributes)."""
        return cls(crop=recipe.aug_crop, crop_padding=int(recipe.aug_crop_padding),
                   crop_scale_min=float(recipe.aug_crop_scale_min),
                   hflip=float(recipe.aug_hflip), vflip=float(recipe.aug_vflip),
                   rotation=float(recipe.aug_rotation),
                   color_jitter=float(recipe.aug_color_jitter),
                   random_erasing=float(recipe.aug_random_erasing))

    @property
    def pad_crop(self) -> bool:
        return self.crop == "pad_crop" and self.crop_padding > 0

    @property
    def resized_crop(self) -> bool:
        return self.crop == "random_resized_crop"

    @property
    def enabled(self) -> bool:
        """False when every transform is a no-op, so the loop can skip the call entirely."""
        return (self.pad_crop or self.resized_crop or self.hflip > 0 or self.vflip > 0
                or self.rotation > 0 or self.color_jitter > 0 or self.random_erasing > 0)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device,
             ) -> torch.Tensor:
    """``n`` float32 draws uniform in [low, high) from ``g``."""
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _check_inputs(x: torch.Tensor, generator: torch.Generator) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float (B, C, H, W) tensor, got {x.dtype} of shape "
                         f"{tuple(x.shape)}")
    if generator.device.type != x.device.type:
        raise ValueError(f"generator must be on the data's device ({x.device}), got one on "
                         f"{generator.device}: create it with torch.Generator(device=x.device)")


class Augmenter:
    """Applies an ``AugmentConfig`` to a batch, with independent random parameters per image."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` (float (B, C, H, W) in [0, 1], any device); same shape, dtype, device.

        Deterministic for a given generator state: the same seed gives the same batch.
        """
        _check_inputs(x, generator)
        cfg = self.cfg
        if not cfg.enabled or x.shape[0] == 0:
            return x
        if cfg.pad_crop:
            x = self._pad_crop(x, generator)
        if cfg.resized_crop or cfg.rotation > 0:
            # One resampling for crop + flips + rotation: one interpolation blur, one pass.
            x = self._affine(x, generator)
        else:
            x = self._flip(x, generator)
        if cfg.color_jitter > 0:
            x = self._color_jitter(x, generator)
        if cfg.random_erasing > 0:
            x = self._erase(x, generator)
        return x.clamp(0.0, 1.0)

    def _draw_flips(self, b: int, g: torch.Generator, device: torch.device,
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-image boolean flip masks (None when that flip is off, so nothing is drawn)."""
        h = torch.rand(b, generator=g, device=device) < self.cfg.hflip if self.cfg.hflip else None
        v = torch.rand(b, generator=g, device=device) < self.cfg.vflip if self.cfg.vflip else None
        return h, v

    def _flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, v = self._draw_flips(x.shape[0], g, x.device)
        if h is not None:
            x = torch.where(h[:, None, None, None], x.flip(-1), x)
        if v is not None:
            x = torch.where(v[:, None, None, None], x.flip(-2), x)
        return x

    def _pad_crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Zero-pad by p, then crop back to H x W at a per-image offset in [0, 2p] (two gathers)."""
        b, c, h, w = x.shape
        p = self.cfg.crop_padding
        padded = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b,), generator=g, device=x.device)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=g, device=x.device)
        rows = oy[:, None] + torch.arange(h, device=x.device)   # (B, H) source rows
        cols = ox[:, None] + torch.arange(w, device=x.device)   # (B, W) source columns
        x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
        return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))

    def _affine(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """random_resized_crop, flips and rotation as one per-image affine resampling.

        ``theta`` maps output coordinates to input coordinates (normalised to [-1, 1]); the output
        is rotate(flip(crop(x))), so theta = crop_scale @ flip @ rotation, plus the crop centre.
        The rotation acts in pixel units, so it stays a rotation on non-square images.
        """
        b, _, h, w = x.shape
        dev = x.device
        cfg = self.cfg
        sx = sy = torch.ones(b, device=dev)   # crop size as a fraction of the side
        cx = cy = torch.zeros(b, device=dev)  # crop centre, normalised
        if cfg.resized_crop:
            # torchvision's law: area ~ U(scale_min, 1), log aspect ~ U(log 3/4, log 4/3); a crop
            # that does not fit is clamped to the side (torchvision retries, then centre-crops).
            area = _uniform(b, cfg.crop_scale_min, 1.0, g, dev)
            ratio = torch.exp(_uniform(b, *map(math.log, _RRC_RATIO), g, dev))
            sx = torch.sqrt(area * ratio).clamp(max=1.0)
            sy = torch.sqrt(area / ratio).clamp(max=1.0)
            cx = (1 - sx) * _uniform(b, -1.0, 1.0, g, dev)
            cy = (1 - sy) * _uniform(b, -1.0, 1.0, g, dev)
        hflip, vflip = self._draw_flips(b, g, dev)
        fx = 1.0 - 2.0 * hflip.float() if hflip is not None else torch.ones(b, device=dev)
        fy = 1.0 - 2.0 * vflip.float() if vflip is not None else torch.ones(b, device=dev)
        angle = torch.zeros(b, device=dev)
        if cfg.rotation > 0:
            angle = torch.deg2rad(_uniform(b, -cfg.rotation, cfg.rotation, g, dev))
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(b, 2, 3, device=dev)
        # rotation in pixel units is diag(1/w, 1/h) @ R @ diag(w, h) in normalised units
        theta[:, 0, 0] = sx * fx * cos
        theta[:, 0, 1] = sx * fx * -sin * h / w
        theta[:, 1, 0] = sy * fy * sin * w / h
        theta[:, 1, 1] = sy * fy * cos
        theta[:, 0, 2] = cx
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _color_jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation with per-image factors (torchvision's formulas, in a
        fixed order; each step clamps to [0, 1] as torchvision does for float images)."""
        b, c = x.shape[:2]
        s = self.cfg.color_jitter

        def factor() -> torch.Tensor:
            return _uniform(b, 1 - s, 1 + s, g, x.device).to(x.dtype)[:, None, None, None]

        x = (x * factor()).clamp(0, 1)
        gray = _grayscale(x)
        x = _blend(x, gray.mean(dim=(-3, -2, -1), keepdim=True), factor())
        if c == 3:
            x = _blend(x, _grayscale(x), factor())
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """With probability p per image, fill one random rectangle with uniform noise."""
        b, _, h, w = x.shape
        dev = x.device
        area = _uniform(b, *_ERASE_AREA, g, dev) * (h * w)
        ratio = torch.exp(_uniform(b, *map(math.log, _ERASE_RATIO), g, dev))
        eh = torch.sqrt(area * ratio).round().clamp(1, h)
        ew = torch.sqrt(area / ratio).round().clamp(1, w)
        y0 = torch.floor(torch.rand(b, generator=g, device=dev) * (h - eh + 1))
        x0 = torch.floor(torch.rand(b, generator=g, device=dev) * (w - ew + 1))
        on = torch.rand(b, generator=g, device=dev) < self.cfg.random_erasing
        mask = _box_mask(y0, x0, eh, ew, h, w) & on[:, None, None, None]
        noise = torch.rand(x.shape, generator=g, device=dev).to(x.dtype)
        return torch.where(mask, noise, x)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma; a 1-channel image is its own grayscale."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    r, gr, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * gr + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped: factor 1 is identity, 0 gives ``other``."""
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def _box_mask(y0: torch.Tensor, x0: torch.Tensor, bh: torch.Tensor, bw: torch.Tensor,
              h: int, w: int) -> torch.Tensor:
    """(B, 1, H, W) bool mask of the per-image boxes [y0, y0+bh) x [x0, x0+bw)."""
    ys = torch.arange(h, device=y0.device, dtype=y0.dtype)[None, :]
    xs = torch.arange(w, device=x0.device, dtype=x0.dtype)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + bh)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + bw)[:, None])
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def _beta(alpha: float, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha) from ``g``, as G1 / (G1 + G2) with Gi ~ Gamma(alpha).

    ``torch.distributions.Beta`` cannot take a generator; ``torch._standard_gamma`` (what it calls
    inside) can, on CPU and CUDA.
    """
    gam = torch._standard_gamma(torch.full((2, n), float(alpha), device=device), generator=g)
    total = gam.sum(0)
    # Both gammas can underflow to 0 for a tiny alpha: call that an even mix.
    return torch.where(total > 0, gam[0] / total.clamp(min=1e-30), torch.full_like(total, 0.5))


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float, generator: torch.Generator,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup / cutmix: mix each image with a random partner in the batch; soft targets.

    Returns (images, targets) with targets float (B, num_classes) summing to 1 per row: one-hot when
    both alphas are 0 (images returned unchanged). Mixup blends whole images with weight
    lam ~ Beta(mixup_alpha); cutmix pastes a partner's box of area about (1 - lam) of the image,
    and the label weight is the exact kept area (timm's "correct_lam"). When both alphas are > 0
    one of the two is used for the whole batch, each with probability 0.5 (like timm); the weight,
    box and partner are per image. Everything stays on the device; nothing syncs to the host.
    """
    _check_inputs(x, generator)
    targets = F.one_hot(y.long(), num_classes).to(x.dtype)
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, "
                         f"{cutmix_alpha}")
    if (mixup_alpha == 0 and cutmix_alpha == 0) or x.shape[0] == 0:
        return x, targets
    b, _, h, w = x.shape
    dev = x.device
    partner = torch.randperm(b, generator=generator, device=dev)
    keep = torch.ones(b, 1, h, w, device=dev)  # weight of the image itself, per pixel
    if cutmix_alpha > 0:
        lam = _beta(cutmix_alpha, b, generator, dev)
        # timm's rand_bbox: box sides sqrt(1 - lam) of the image's, centre anywhere, clipped.
        cut = torch.sqrt(1 - lam)
        bh, bw = torch.floor(h * cut), torch.floor(w * cut)
        cy = torch.floor(torch.rand(b, generator=generator, device=dev) * h)
        cx = torch.floor(torch.rand(b, generator=generator, device=dev) * w)
        y0, y1 = (cy - bh // 2).clamp(0, h), (cy + bh // 2).clamp(0, h)
        x0, x1 = (cx - bw // 2).clamp(0, w), (cx + bw // 2).clamp(0, w)
        keep = (~_box_mask(y0, x0, y1 - y0, x1 - x0, h, w)).float()
    if mixup_alpha > 0:
        lam = _beta(mixup_alpha, b, generator, dev)[:, None, None, None].expand(b, 1, h, w)
        if cutmix_alpha > 0:
            use_cutmix = torch.rand((), generator=generator, device=dev) < 0.5
            keep = torch.where(use_cutmix, keep, lam)
        else:
            keep = lam
    keep = keep.to(x.dtype)
    mixed = keep * x + (1 - keep) * x[partner]
    lam_eff = keep.mean(dim=(1, 2, 3))[:, None]
    return mixed, lam_eff * targets + (1 - lam_eff) * targets[partner]
