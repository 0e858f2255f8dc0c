"""The image rules that keep a bad photo out of every people card."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.thumbnails import ImageRejected, make_thumbnails, placeholder_thumbnails


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_three_square_jpegs_at_the_configured_sizes() -> None:
    thumbs = make_thumbnails(encode(Image.new("RGB", (900, 600), "navy"), "JPEG"), (48, 72, 300))
    sizes = [decode(t).size for t in (thumbs.small, thumbs.medium, thumbs.large)]
    assert sizes == [(48, 48), (72, 72), (300, 300)]
    assert all(decode(t).format == "JPEG" for t in (thumbs.small, thumbs.medium, thumbs.large))


def test_centre_crop_keeps_the_middle_of_a_wide_photo() -> None:
    image = Image.new("RGB", (300, 100), "red")
    image.paste(Image.new("RGB", (100, 100), "blue"), (100, 0))  # blue square in the centre
    large = decode(make_thumbnails(encode(image, "PNG")).large)
    r, g, b = large.getpixel((5, 100))
    assert b > 200 and r < 60  # the left edge of the crop is the blue middle, not the red side


def test_transparency_is_flattened_on_white() -> None:
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (100, 100), (0, 128, 0, 255)), (50, 50))
    large = decode(make_thumbnails(encode(image, "PNG")).large)
    assert large.mode == "RGB"
    assert large.getpixel((2, 2)) == (255, 255, 255)
    assert large.getpixel((100, 100))[1] > 100


def test_cmyk_and_palette_images_become_rgb() -> None:
    for image, fmt in ((Image.new("CMYK", (120, 120), (0, 255, 255, 0)), "JPEG"),
                       (Image.new("RGB", (120, 120), "orange").convert("P"), "GIF")):
        large = decode(make_thumbnails(encode(image, fmt)).large)
        assert large.mode == "RGB"


def test_exif_orientation_is_applied() -> None:
    landscape = Image.new("RGB", (400, 200), "white")
    landscape.paste(Image.new("RGB", (200, 200), "black"), (0, 0))  # black on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the left side becomes the top
    large = decode(make_thumbnails(encode(landscape, "JPEG", exif=exif.tobytes())).large)
    assert large.getpixel((100, 10))[0] < 60      # top is black
    assert large.getpixel((100, 190))[0] > 200    # bottom is white


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is not an image", "not an image"),
    (encode(Image.new("RGB", (800, 800), "red"), "JPEG")[:600], "corrupt or truncated"),
])
def test_unusable_bytes_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        make_thumbnails(data)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    bomb = encode(Image.new("L", (8000, 8000)), "PNG")  # 64 MP, a few kB on disk
    with pytest.raises(ImageRejected, match="pixel limit"):
        make_thumbnails(bomb, max_pixels=40_000_000)


def test_too_many_bytes_is_refused() -> None:
    with pytest.raises(ImageRejected, match="byte limit"):
        make_thumbnails(b"\xff" * 2048, max_bytes=1024)


def test_digest_changes_with_the_picture_only() -> None:
    red = encode(Image.new("RGB", (100, 100), "red"), "PNG")
    blue = encode(Image.new("RGB", (100, 100), "blue"), "PNG")
    assert make_thumbnails(red).digest == make_thumbnails(red).digest
    assert make_thumbnails(red).digest != make_thumbnails(blue).digest


def test_placeholder_is_three_square_jpegs() -> None:
    thumbs = placeholder_thumbnails((48, 72, 200))
    assert [decode(t).size for t in (thumbs.small, thumbs.medium, thumbs.large)] == \
        [(48, 48), (72, 72), (200, 200)]
