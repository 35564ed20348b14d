"""Write the example's image folder: scikit-learn's 1,797 handwritten digits as 8x8 grey PNG
files, one sub-folder per digit (images/0/0007.png, ...), the layout `data.source: image_folder`
reads. `make tune SPACE=examples/digit_images/space.yaml` runs it first; it writes once."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

FOLDER = Path(__file__).resolve().parent / "images"


def write_images(folder: Path, copies: int = 1) -> int:
    """Write the digits (each `copies` times, for a larger folder) unless they are there."""
    done = folder / ".complete"
    if done.exists():
        return 0
    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
    written = 0
    for copy in range(copies):
        for index, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
            target = folder / str(label) / f"{copy:02d}-{index:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(target)
            written += 1
    done.touch()
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER
    count = write_images(target, int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    if count:
        print(f"wrote {count} images to {target}")
