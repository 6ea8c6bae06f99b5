"""Uploaded images: 16 MP by default, and large ones are downscaled before OCR and the encoder see them."""

import io

from PIL import Image

from ray_app.settings import Settings
from ray_app.vision.analyzer import load_image


def _encoded(size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (40, 120, 200)).save(buf, format=fmt)
    return buf.getvalue()


def test_default_pixel_limit_is_16_megapixels():
    assert Settings().max_image_pixels == 16_000_000


def test_large_images_are_downscaled_keeping_their_size():
    for fmt in ("PNG", "JPEG"):
        image = load_image(_encoded((4000, 3000), fmt), Settings())
        assert max(image.size) == 2048 and image.size[0] / image.size[1] == 2048 / 1536
        assert image.info["original_size"] == (4000, 3000) and image.mode == "RGB"
    small = load_image(_encoded((300, 200), "PNG"), Settings())
    assert small.size == (300, 200) and small.info["original_size"] == (300, 200)
    assert max(load_image(_encoded((1000, 500), "PNG"), Settings(max_image_side=256)).size) == 256
