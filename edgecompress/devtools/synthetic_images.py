"""Synthetic JPEG class folders that look like photos to a data pipeline: varied sizes, three
channels, JPEG compression, and a class signal a small CNN can learn (a coloured blob whose hue
and position depend on the class, on a noisy textured background).

Used by the streaming tests and ``benchmarks/data_scale.py``; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image_folder(root: str | Path, *, classes: int = 4, per_class: int = 50,
                       size: tuple[int, int] = (224, 224), jitter: int = 0, seed: int = 0,
                       quality: int = 85) -> Path:
    """Write ``root/class_<k>/<i>.jpg`` and return ``root``.

    Args:
        size: (height, width) of the images; each side varies by up to ``jitter`` pixels so
            the folder is not uniformly sized (as real photos are not).
        quality: JPEG quality.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    hues = np.linspace(0, 1, classes, endpoint=False)
    for k in range(classes):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.asarray(_hue_to_rgb(hues[k]), np.float32)
        for i in range(per_class):
            h = int(size[0] + rng.integers(-jitter, jitter + 1)) if jitter else size[0]
            w = int(size[1] + rng.integers(-jitter, jitter + 1)) if jitter else size[1]
            img = rng.normal(110, 30, (h, w, 3)).astype(np.float32)
            yy, xx = np.mgrid[0:h, 0:w]
            cy = h * (0.3 + 0.4 * ((k % 2) + rng.random() * 0.5) / 1.5)
            cx = w * (0.3 + 0.4 * (((k // 2) % 2) + rng.random() * 0.5) / 1.5)
            radius = min(h, w) * (0.2 + 0.1 * rng.random())
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2
            img[blob] = img[blob] * 0.3 + colour * 0.7
            pixels = np.clip(img, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{i:06d}.jpg", quality=quality)
    return root


def _hue_to_rgb(hue: float) -> tuple[float, float, float]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(float(hue), 0.9, 0.95)
    return (255 * r, 255 * g, 255 * b)
