"""Deterministic test photos rendered with Pillow, plus cheap image probing."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

#: Photo kinds understood by :func:`render`.
KINDS = (
    "jpeg", "png-alpha", "cmyk-jpeg", "exif-rotated-jpeg", "gif", "palette-png",
    "corrupt", "zero", "text", "huge-pixels", "big-bytes",
)
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "BMP": "image/bmp",
         "WEBP": "image/webp", "TIFF": "image/tiff"}


@dataclass(frozen=True)
class PhotoSpec:
    """How to render a photo. ``size_bytes`` only matters for ``big-bytes``."""

    kind: str = "jpeg"
    width: int = 800
    height: int = 800
    color: str = "#3366cc"
    size_bytes: int = 21 * 1024 * 1024

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PhotoSpec":
        """Build from the tenant-file form ``{"kind", "width", "height", "color", "sizeBytes"}``."""
        kind = data.get("kind", "jpeg")
        if kind not in KINDS:
            raise ValueError(f"unknown photo kind {kind!r}; expected one of {KINDS}")
        return cls(
            kind=kind,
            width=int(data.get("width", 800)),
            height=int(data.get("height", 800)),
            color=str(data.get("color", "#3366cc")),
            size_bytes=int(data.get("sizeBytes", data.get("size_bytes", 21 * 1024 * 1024))),
        )

    def to_json(self) -> dict[str, Any]:
        """Tenant-file form of this spec."""
        out: dict[str, Any] = {"kind": self.kind, "width": self.width, "height": self.height, "color": self.color}
        if self.kind == "big-bytes":
            out["sizeBytes"] = self.size_bytes
        return out


@dataclass(frozen=True)
class Blob:
    """Immutable photo bytes with cached metadata (shared between users)."""

    data: bytes
    content_type: str
    size: tuple[int, int] | None  # pixel (width, height) from the header, None if not an image
    digest: str

    @classmethod
    def from_bytes(cls, data: bytes, content_type: str | None = None) -> "Blob":
        """Probe ``data`` once and wrap it."""
        size, fmt = probe(data)
        ctype = content_type or _MIME.get(fmt or "", "image/jpeg")
        return cls(data, ctype, size, hashlib.sha1(data).hexdigest())


def probe(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """Return ((width, height), format) from the image header, or (None, None)."""
    if not data:
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return (int(img.width), int(img.height)), img.format
    except Exception:  # noqa: BLE001 - anything Pillow can't open is "not an image"
        return None, None


def _rgb(color: str) -> tuple[int, int, int]:
    from PIL import ImageColor

    r, g, b = ImageColor.getrgb(color)[:3]
    return r, g, b


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return (255 - rgb[0], 255 - rgb[1], 255 - rgb[2])


def _portrait_like(spec: PhotoSpec, mode: str = "RGB") -> Image.Image:
    """Solid background with a contrasting disc: a recognisable 'face'."""
    rgb = _rgb(spec.color)
    img = Image.new("RGB", (spec.width, spec.height), rgb)
    draw = ImageDraw.Draw(img)
    w, h = spec.width, spec.height
    draw.ellipse((w * 0.3, h * 0.2, w * 0.7, h * 0.6), fill=_contrast(rgb))
    return img.convert(mode) if mode != "RGB" else img


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _huge_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """1-bit palette PNG of a single colour, built without allocating the pixels."""
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed zero bits
    comp = zlib.compressobj(9)
    parts = []
    rows_per = max(1, (1 << 20) // len(row))
    block = row * rows_per
    done = 0
    while done < height:
        n = min(rows_per, height - done)
        parts.append(comp.compress(block if n == rows_per else row * n))
        done += n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"PLTE", bytes(rgb))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _big_jpeg(spec: PhotoSpec) -> bytes:
    """Small visible JPEG padded with APP15 segments of pseudo-random data up to size_bytes."""
    base = _save(_portrait_like(spec), "JPEG", quality=90)
    need = max(0, spec.size_bytes - len(base))
    rng = random.Random(spec.color)
    segs = []
    max_payload = 65533
    while need > 0:
        n = min(max_payload, max(need - 4, 1))
        segs.append(b"\xff\xef" + struct.pack(">H", n + 2) + rng.randbytes(n))
        need -= n + 4
    return base[:2] + b"".join(segs) + base[2:]


def render(spec: PhotoSpec) -> Blob:
    """Render ``spec`` (cached: each distinct spec is rendered once per process)."""
    with _cache_lock:
        blob = _cache.get(spec)
    if blob is None:
        blob = _render(spec)
        with _cache_lock:
            blob = _cache.setdefault(spec, blob)
    return blob


_cache: dict[PhotoSpec, Blob] = {}
_cache_lock = threading.Lock()


def _render(spec: PhotoSpec) -> Blob:
    kind = spec.kind
    if kind == "jpeg":
        return Blob.from_bytes(_save(_portrait_like(spec), "JPEG", quality=88))
    if kind == "png-alpha":
        img = _portrait_like(spec).convert("RGBA")
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).ellipse((0, 0, spec.width - 1, spec.height - 1), fill=255)
        img.putalpha(mask)  # corners fully transparent
        return Blob.from_bytes(_save(img, "PNG"))
    if kind == "cmyk-jpeg":
        return Blob.from_bytes(_save(_portrait_like(spec, "CMYK"), "JPEG", quality=88))
    if kind == "exif-rotated-jpeg":
        # Stored landscape (W x H, W > H); after EXIF transpose it is portrait H x W with the
        # top half in `color` and the bottom half in its inverse.
        w, h = max(spec.width, spec.height), min(spec.width, spec.height)
        if w == h:
            w = h + max(1, h // 3)
        rgb = _rgb(spec.color)
        portrait = Image.new("RGB", (h, w), _contrast(rgb))
        ImageDraw.Draw(portrait).rectangle((0, 0, h - 1, w // 2 - 1), fill=rgb)
        stored = portrait.transpose(Image.Transpose.ROTATE_90)  # Orientation 6 rotates it back
        exif = Image.Exif()
        exif[0x0112] = 6
        return Blob.from_bytes(_save(stored, "JPEG", quality=90, exif=exif.tobytes()))
    if kind == "gif":
        return Blob.from_bytes(_save(_portrait_like(spec).convert("P", palette=Image.Palette.ADAPTIVE), "GIF"))
    if kind == "palette-png":
        return Blob.from_bytes(_save(_portrait_like(spec).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    if kind == "corrupt":
        full = _save(_portrait_like(spec), "JPEG", quality=88)
        return Blob(full[: len(full) // 2], "image/jpeg", probe(full)[0], hashlib.sha1(full[: len(full) // 2]).hexdigest())
    if kind == "zero":
        return Blob(b"", "image/jpeg", None, hashlib.sha1(b"").hexdigest())
    if kind == "text":
        return Blob(b"not an image", "image/jpeg", None, hashlib.sha1(b"not an image").hexdigest())
    if kind == "huge-pixels":
        w = spec.width if spec.width >= 5000 else 10000
        h = spec.height if spec.height >= 5000 else 10000
        return Blob.from_bytes(_huge_png(w, h, _rgb(spec.color)))
    if kind == "big-bytes":
        return Blob.from_bytes(_big_jpeg(spec))
    raise ValueError(f"unknown photo kind {kind!r}")
