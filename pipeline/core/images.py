"""The built-in `image_folder` source: one sub-folder per class of PNG or JPEG files, read at
one fixed size. It is a loader like a user's, returning a map-style Dataset, so its images are
read on demand by each process and never travel whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFiles:
    """Map-style Dataset of image files: item i is the i-th file as float32 pixels in 0..255,
    shaped (channels, height, width)."""

    def __init__(self, files: list[Path], size: tuple[int, int], channels: int) -> None:
        self.files = files
        self.size = size  # (height, width)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        return read_image(self.files[index], self.size, self.channels)


def read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """An image file as float32 pixels in 0..255 shaped (channels, height, width), resized to
    `size` (height, width): by area averaging when shrinking (each pixel the mean of its block),
    else bilinearly. Training and prediction read images through this one function."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    try:
        with Image.open(path) as image:
            pixels = image.convert("L" if channels == 1 else "RGB")
            if pixels.size != (width, height):
                shrink = pixels.width >= width and pixels.height >= height
                method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
                pixels = pixels.resize((width, height), method)
            array = np.asarray(pixels, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise PipelineError(f"{path}: cannot read as an image: {exc}") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def size_of(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise PipelineError(f"{path}: cannot read as an image: {exc}") from None
    return height, width


def image_folder(
    path: str, image_size: list[int] | None = None, channels: int = 1
) -> dict[str, Any]:
    """The images under `path`, one sub-folder per class (the sub-folder's name is the class),
    read at `image_size` ([height, width]; default: the first image's size)."""
    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such image folder")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise PipelineError(
            f"{folder}: no PNG or JPEG files in class sub-folders (expected {folder}/CLASS/*.png)"
        )
    size = (int(image_size[0]), int(image_size[1])) if image_size else size_of(files[0])
    return {
        "features": ImageFiles(files, size, channels),
        "labels": np.asarray(labels, dtype=np.int64),
        "class_names": classes,
    }
