"""Training augmentation, batched on whatever device the images live on."""

from __future__ import annotations

import torch


def augment_batch(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip, on whatever device ``x`` lives.

    Offsets and flips are drawn on the CPU from ``generator`` so a run is reproducible on any device.

    Args:
        x: images, NCHW in [0, 1].
        padding: zero padding on each side before cropping back to the input size (0 = no crop).
        flip: flip each image horizontally with probability 1/2.
        generator: CPU generator the offsets and flips are drawn from.

    Returns:
        Augmented images, same shape and dtype as ``x``.
    """
    n, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x
