"""Image files: header checks at scan time, decoding to uint8 tensors, and one geometry for a folder.

Every file of an image folder has its header parsed when the folder is loaded (before any run
directory is claimed): Pillow reads only the first bytes of a file for that, so it is cheap even
for large folders. That catches files that are not images (or not a format Pillow reads), headers
cut short, declared sizes over :data:`MAX_IMAGE_PIXELS` (decompression bombs) and floating-point
pixels (no fixed range). It does not catch damage after the header - truncated or corrupt pixel data,
bad chunk checksums - which only a full decode finds; :func:`read_image` reports that as a
:class:`DataError` naming the file, when the file is first read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# At most 8192 x 8192 pixels (192 MiB decoded as RGB, per image and per loader worker). Large
# enough for photographs of up to 67 megapixels, which get resized to --image-size anyway; below
# Pillow's own decompression-bomb warning (89.5 Mpx), so ours is the check that decides, with a
# message that gives the declared size and the fix.
MAX_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
# Pillow modes read as one grayscale channel (what the loader has always treated as grayscale;
# modes with alpha, palettes and the rest count as colour and are converted to RGB).
GRAY_MODES = frozenset({"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"})
# Integer grayscale modes read as 16 bits per pixel and scaled to 8 bits by /257, so 65535 -> 255
# (Pillow's convert("L") would clip everything over 255 to white). "I" is how Pillow opens 16-bit
# PGM files (scaled to 0..65535) and 32-bit integer TIFFs, whose values must then lie in 0..65535.
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header declares: its path, size in pixels and Pillow mode."""

    path: str
    width: int
    height: int
    mode: str

    @property
    def gray(self) -> bool:
        """Whether the file holds one grayscale channel."""
        return self.mode in GRAY_MODES


def _reason(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # its message only repeats the path
        return "not an image format Pillow can read"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_headers(paths: Sequence[str]) -> list[ImageHeader]:
    """Parse the header of every image file in ``paths`` (size and mode) without decoding pixels.

    Raises:
        DataError: naming the first file that is not a readable image, declares more than
            :data:`MAX_IMAGE_PIXELS` pixels, or holds floating-point pixels.
    """
    from PIL import Image

    with warnings.catch_warnings():
        # Our own, lower bound decides (check_header); Pillow's warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return [read_header(path) for path in paths]


def read_header(path: str) -> ImageHeader:
    """Parse the header of one image file; see :func:`read_headers` (which also silences Pillow's
    decompression-bomb warning, made redundant by our lower bound)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            header = ImageHeader(path, img.size[0], img.size[1], img.mode)
    except Image.DecompressionBombError as exc:
        # Pillow refuses sizes over twice its limit before saying what they are; read them ourselves.
        size = _declared_size(path)
        if size is None:
            raise DataError(f"{path!r} is too large to decode ({exc}); downscale it below "
                            f"{MAX_SIDE}x{MAX_SIDE} pixels or remove it") from None
        header = ImageHeader(path, size[0], size[1], "?")
    except Exception as exc:  # Pillow's format plugins raise many exception types on malformed input
        raise DataError(f"cannot read image {path!r} ({_reason(exc)}); replace or delete the file") from None
    check_header(header)
    return header


def _declared_size(path: str) -> tuple[int, int] | None:
    """The size a file declares, read by the format plugin its suffix names (no bomb check)."""
    from PIL import Image

    Image.init()
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt not in Image.OPEN:
        return None
    try:
        with open(path, "rb") as fp:
            return tuple(Image.OPEN[fmt][0](fp, path).size)  # type: ignore[return-value]
    except Exception:  # a file whose suffix lies about its format: fall back to Pillow's own message
        return None


def check_header(header: ImageHeader) -> None:
    """Refuse a declared size over :data:`MAX_IMAGE_PIXELS`, and floating-point pixels."""
    w, h = header.width, header.height
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{header.path!r} declares {w}x{h} pixels ({w * h / 1e6:.0f} Mpx), over the {MAX_SIDE}x{MAX_SIDE} "
            f"({MAX_IMAGE_PIXELS / 1e6:.0f} Mpx) limit (a decompression bomb, or a very large image); "
            "downscale it or remove it"
        )
    if header.mode == "F":
        # Floating-point pixels have no fixed range to map onto [0, 1]; converting clips them.
        raise DataError(f"{header.path!r} holds 32-bit floating-point pixels, which have no fixed range; "
                        "save it as an 8- or 16-bit image")


def decide_geometry(headers: Sequence[ImageHeader], image_size: int | None) -> tuple[int, int, list[str]]:
    """One (size, channels) for every image of a folder, decided from all headers, not the first.

    Size: ``image_size`` when given (every image is resized to it, square); otherwise every image
    must be square and of the same size. Channels: 1 when every file is grayscale, 3 as soon as one
    is colour (grayscale files are then repeated over R, G and B).

    Returns:
        ``(size, channels, notes)``; ``notes`` says how mixed grayscale and colour files were combined.
    """
    first = headers[0]
    if image_size is None:
        for header in headers:
            if header.width != header.height:
                raise DataError(f"images are {header.width}x{header.height}, not square (e.g. {header.path!r}); "
                                "pass --image-size N to resize every image to NxN")
            if header.width != first.width:
                raise DataError(f"images differ in size: {first.path!r} is {first.width}x{first.height} but "
                                f"{header.path!r} is {header.width}x{header.height}; "
                                "pass --image-size N to resize every image to NxN")
    gray = sum(h.gray for h in headers)
    channels = 1 if gray == len(headers) else 3
    notes = []
    if 0 < gray < len(headers):
        notes.append(f"{gray} grayscale and {len(headers) - gray} colour images: the grayscale ones are "
                     "repeated over 3 channels")
    return int(image_size or first.width), channels, notes


def read_image(path: str, size: int, channels: int) -> torch.Tensor:
    """Decode ``path`` to a uint8 ``(channels, size, size)`` tensor (bilinear resize when needed).

    16-bit grayscale is scaled to 8 bits (value / 257, rounded), not clipped.

    Raises:
        DataError: the file cannot be decoded (truncated or corrupt pixel data, ...), naming it.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = _eight_bit(img, path)
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow's decoders raise many exception types on damaged data
        raise DataError(f"cannot decode image {path!r} ({_reason(exc)}); replace or delete the file") from None
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _eight_bit(img: Any, path: str) -> Any:
    """``img`` itself, or for a 16-bit grayscale mode an 8-bit ``L`` image of it (0..65535 -> 0..255)."""
    if img.mode not in SIXTEEN_BIT_MODES:
        return img
    from PIL import Image

    values = np.asarray(img)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(f"{path!r} holds integer pixels outside 0..65535 ({values.min()}..{values.max()}); "
                        "save it as an 8- or 16-bit image")
    return Image.fromarray(np.rint(values / 257.0).astype(np.uint8))
