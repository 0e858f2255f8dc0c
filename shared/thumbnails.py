"""Turn a Microsoft 365 photo into SharePoint's three square JPEG thumbnails, or refuse it.

Pure: bytes in, bytes out. Everything that could put a broken or hostile image into every
people card of the tenant is refused here, before any SharePoint call.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat, UnidentifiedImageError

from . import reasons
from .reasons import ReasonCode

JPEG_QUALITY = 90
# Pillow's decode/resize/encode take tens of ms of CPU per photo: off the event loop, in a pool
# this small so that a queue instance's batch of syncs never holds more than this many decoded
# photos (up to MAX_PHOTO_PIXELS each) in memory at once. Pillow releases the GIL while it works.
THUMBNAIL_THREADS = 2
_pool = ThreadPoolExecutor(max_workers=THUMBNAIL_THREADS, thread_name_prefix="thumbnails")


class ImageRejected(ValueError):
    """The photo cannot be turned into thumbnails; the message says why (never the bytes), `code`
    names the reason (shared/reasons.py)."""

    def __init__(self, message: str, code: ReasonCode = reasons.IMAGE_CORRUPT) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Thumbnails:
    """The S, M and L thumbnails, in SharePoint's naming order."""

    small: bytes
    medium: bytes
    large: bytes

    def by_suffix(self) -> dict[str, bytes]:
        return {"S": self.small, "M": self.medium, "L": self.large}

    @property
    def digest(self) -> str:
        """A hash of what would be uploaded: equal digests mean nothing to upload."""
        sha = hashlib.sha256()
        for part in (self.small, self.medium, self.large):
            sha.update(len(part).to_bytes(8, "big"))
            sha.update(part)
        return sha.hexdigest()


async def make_thumbnails_off_loop(data: bytes, sizes: tuple[int, int, int], *, max_bytes: int,
                                   max_pixels: int) -> Thumbnails:
    """`make_thumbnails` in the thumbnail threads, so the event loop serves other invocations."""
    work = functools.partial(make_thumbnails, data, sizes, max_bytes=max_bytes,
                             max_pixels=max_pixels)
    return await asyncio.get_running_loop().run_in_executor(_pool, work)


def make_thumbnails(data: bytes, sizes: tuple[int, int, int] = (48, 72, 200), *,
                    max_bytes: int = 10 * 1024 * 1024, max_pixels: int = 40_000_000) -> Thumbnails:
    """Decode `data` safely, orient, flatten, centre-crop to a square and encode three JPEGs."""
    image = _decode(data, max_bytes=max_bytes, max_pixels=max_pixels, largest=max(sizes))
    small, medium, large = (_encode(ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS))
                            for size in sizes)
    return Thumbnails(small, medium, large)


def shown_size(data: bytes) -> tuple[int, int] | None:
    """The pixel size of an existing thumbnail file, from its header; None when not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def picture_px(data: bytes) -> int | None:
    """The width in pixels of an existing thumbnail file, read from its header only (no decoding);
    None when the bytes are not an image."""
    size = shown_size(data)
    return size[0] if size else None


def difference(shown: bytes, expected: bytes) -> float:
    """How far a thumbnail people see is from the one expected, by content: the mean absolute
    difference per channel (0-255) after bringing `shown` to `expected`'s size. Two JPEG encodings
    of one picture differ by a few units; different pictures by tens (tests/test_verify.py)."""
    with Image.open(io.BytesIO(expected)) as want_file, Image.open(io.BytesIO(shown)) as got_file:
        want = _to_rgb(want_file)
        got = _to_rgb(ImageOps.exif_transpose(got_file))
        if got.size != want.size:
            got = ImageOps.fit(got, want.size, Image.Resampling.LANCZOS)
        means = ImageStat.Stat(ImageChops.difference(got, want)).mean
    return sum(means) / len(means)


def placeholder_thumbnails(sizes: tuple[int, int, int] = (48, 72, 200)) -> Thumbnails:
    """A neutral grey silhouette: what a removed photo is replaced with while the profile still
    links to the thumbnail files (deleting them would leave a broken image on every people card)."""
    canvas = Image.new("RGB", (400, 400), (225, 225, 225))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((130, 70, 270, 210), fill=(160, 160, 160))
    draw.ellipse((60, 230, 340, 520), fill=(160, 160, 160))
    small, medium, large = (_encode(canvas.resize((s, s), Image.Resampling.LANCZOS)) for s in sizes)
    return Thumbnails(small, medium, large)


def _decode(data: bytes, *, max_bytes: int, max_pixels: int, largest: int) -> Image.Image:
    if not data:
        raise ImageRejected("the photo is empty (0 bytes)", reasons.IMAGE_EMPTY)
    if len(data) > max_bytes:
        raise ImageRejected(f"the photo is {len(data):,} bytes, over the {max_bytes:,}-byte limit",
                            reasons.IMAGE_TOO_LARGE)
    try:
        with warnings.catch_warnings():
            # Pillow warns, then errors, on decompression bombs; our own pixel limit is stricter.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"the photo is {width}x{height} pixels, over the "
                                    f"{max_pixels:,}-pixel limit", reasons.IMAGE_TOO_MANY_PIXELS)
            if image.format not in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"):
                raise ImageRejected(f"{image.format} images are not accepted",
                                    reasons.IMAGE_FORMAT_REFUSED)
            if image.format == "JPEG":
                image.draft(image.mode, (largest, largest))  # decode at a reduced scale: faster
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("the photo is not an image Pillow can read",
                            reasons.IMAGE_UNREADABLE) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageRejected("the photo looks like a decompression bomb", reasons.IMAGE_BOMB) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"the photo is corrupt or truncated ({type(error).__name__})") from None
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (JPEG has none) and bring CMYK, palette or grey to RGB."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True, progressive=False)
    return out.getvalue()
