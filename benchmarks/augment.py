"""Benchmark 2, augmentation: the project's batched per-image augmentation vs torchvision.

The same transforms with independent random parameters per image: pad-and-crop (padding 4),
horizontal flip (p=0.5), rotation (+-15 degrees), colour jitter (brightness, contrast,
saturation 0.4), from uint8 images to float32 in [0, 1].

* project: ``trainables.augment.Augmenter`` on whole batches in the main process
  (``x.float() / 255`` then one call per batch), with ONE torch thread by default: half the
  cores torchvision gets, and immune to the OpenMP stalls that a second thread suffers on a
  machine shared with other work (measured: 5-7x slower with 2 threads under load);
* torchvision: ``torchvision.transforms.v2.Compose`` applied per sample in a ``DataLoader``
  with 2 workers (persistent, so worker start-up is not counted; 1 torch thread each, as the
  DataLoader sets), the usual way to get per-image parameters from torchvision.

On digits (1x32x32, the 1,294 training images tiled to ``--images``) and on synthetic 3x32x32
images. Each side augments every image once per pass; the best of ``--passes`` timed passes is
kept (after one warm-up pass). Headline: the smaller of the two project / torchvision ratios.

    python benchmarks/augment.py [--images 8192] [--batch-size 256] [--passes 3] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import emit, stdout_to_stderr

TARGET = 3.0
PAD, HFLIP, ROTATION, JITTER = 4, 0.5, 15.0, 0.4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8192, help="images per pass")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--passes", type=int, default=3, help="timed passes (best kept)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (torchvision)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the project side (default 1: one core against "
                        "torchvision's --workers processes)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1024 images, 1 pass")
    args = p.parse_args()
    if args.quick:
        args.images, args.passes = 1024, 1
    return args


def tiled(x: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // len(x))
    return x.repeat(reps, 1, 1, 1)[:n].contiguous()


def project_pass(images: torch.Tensor, batch_size: int, seed: int) -> float:
    """Seconds to augment every image once, batch by batch, as the training loop does."""
    from trainables.augment import AugmentConfig, Augmenter

    aug = Augmenter(AugmentConfig(crop="pad_crop", crop_padding=PAD, hflip=HFLIP,
                                  rotation=ROTATION, color_jitter=JITTER))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        out = aug(images[i:i + batch_size].float().div_(255), gen)
    assert out.dtype == torch.float32
    return time.perf_counter() - start


class _PerSample(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform: object) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


def torchvision_loader(images: torch.Tensor, batch_size: int,
                       workers: int) -> torch.utils.data.DataLoader:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    size = images.shape[-1]
    transform = v2.Compose([
        v2.RandomCrop(size, padding=PAD), v2.RandomHorizontalFlip(HFLIP),
        v2.RandomRotation(ROTATION),
        v2.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
        v2.ToDtype(torch.float32, scale=True)])
    wrapped = tv_tensors.Image(images)  # so every v2 transform knows it is an image
    return torch.utils.data.DataLoader(_PerSample(wrapped, transform), batch_size=batch_size,
                                       shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0)


def torchvision_pass(loader: torch.utils.data.DataLoader) -> float:
    start = time.perf_counter()
    for batch in loader:
        assert batch.dtype == torch.float32
    return time.perf_counter() - start


def measure(images: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    n = len(images)
    project_pass(images, args.batch_size, seed=0)  # warm-up
    proj = min(project_pass(images, args.batch_size, seed=k + 1) for k in range(args.passes))
    loader = torchvision_loader(images, args.batch_size, args.workers)
    torchvision_pass(loader)  # warm-up: starts the persistent workers
    tv = min(torchvision_pass(loader) for _ in range(args.passes))
    del loader
    return {"project_images_per_s": n / proj, "torchvision_images_per_s": n / tv,
            "ratio": tv / proj}


def main() -> None:
    args = parse_args()
    from trainables.data import load_data

    torch.set_num_threads(args.threads)
    results = {}
    with stdout_to_stderr():
        digits = load_data("digits", image_size=32).train_x
        synthetic = load_data("synthetic", image_size=32).train_x
        results["digits_1x32x32"] = measure(tiled(digits, args.images), args)
        results["synthetic_3x32x32"] = measure(tiled(synthetic, args.images), args)
    ratio = min(r["ratio"] for r in results.values())
    emit("augment", {**results, "threads": args.threads, "workers": args.workers},
         ratio=ratio, target=f"project / torchvision images/s >= {TARGET:g} on both",
         met=ratio >= TARGET, args=args)


if __name__ == "__main__":
    main()
