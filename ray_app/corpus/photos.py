"""The ``photos`` source: the photographs bundled with scikit-image, with hand-written captions.

Only the files that ship inside the ``skimage/data`` folder are read (nothing is downloaded).
Each is saved once as a PNG under ``$PRISM_HOME/data/photos/`` so every record's image is a plain
file path. Where a photo fits one of the stamp categories, its ``metadata.category`` names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ray_app.corpus.schema import make_record
from ray_app.errors import Unavailable

SOURCE = "photos"
LICENSE = "CC0 / public domain (scikit-image data; see skimage/data/README.txt)"
URL = "https://scikit-image.org/docs/stable/api/skimage.data.html"


class PhotoNotAvailable(Unavailable, FileNotFoundError):
    """A bundled photo is missing from this scikit-image install."""


@dataclass(frozen=True)
class Photo:
    """One bundled photo: file inside ``skimage/data``, caption, and category (or None)."""

    file: str
    name: str
    caption: str
    category: str | None


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut.png", "astronaut", "Astronaut Eileen Collins in her orange flight suit in front of the American flag.", "space"),
    Photo("rocket.jpg", "rocket", "A Falcon 9 rocket standing on its launch pad before lift-off.", "space"),
    Photo("moon.png", "moon", "The surface of the Moon, covered with craters, in black and white.", "space"),
    Photo("hubble_deep_field.jpg", "hubble_deep_field", "The Hubble Deep Field: thousands of distant galaxies in a dark sky.", "space"),
    Photo("chelsea.png", "cat", "Chelsea the cat, a tabby cat looking at the camera.", "animals"),
    Photo("horse.png", "horse", "The black silhouette of a galloping horse.", "animals"),
    Photo("coffee.png", "coffee", "A cup of coffee on a saucer with a spoon, seen from above.", "food"),
    Photo("coins.png", "coins", "Old Greek coins lying on a table, in black and white.", "symbols"),
    Photo("camera.png", "camera", "A photographer with a camera on a tripod in a park, in black and white.", "people"),
    Photo("motorcycle_left.png", "motorcycle", "A motorcycle parked in a garage, seen from the side.", "vehicles"),
    Photo("clock_motion.png", "clock", "A wall clock photographed with motion blur.", "household"),
    Photo("brick.png", "brick", "A brick wall, close up, in black and white.", "town"),
    Photo("grass.png", "grass", "Blades of grass, close up, in black and white.", "plants"),
    Photo("gravel.png", "gravel", "Small stones of gravel on the ground, close up.", "naturalforces"),
    Photo("retina.jpg", "retina", "A photograph of the retina at the back of a human eye, with blood vessels.", "medical"),
    Photo("ihc.png", "immunohistochemistry", "A microscope image of stained tissue (immunohistochemistry).", "medical"),
    Photo("cell.png", "cell", "A microscope image of a living cell.", "medical"),
    Photo("microaneurysms.png", "microaneurysms", "A small patch of a retina image showing tiny red microaneurysms.", "medical"),
    Photo("page.png", "page", "A scanned page of printed text with uneven lighting.", "hobbies"),
    Photo("text.png", "text", "Printed text on a light background, photographed at an angle.", "symbols"),
    Photo("color.png", "colorwheel", "A colour wheel showing the hues of the rainbow.", "symbols"),
    Photo("chessboard_RGB.png", "chessboard", "A black and white chessboard pattern.", "hobbies"),
    Photo("logo.png", "logo", "The scikit-image logo: a snake made of pixels.", "symbols"),
)


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.data_dir)


def export_photo(photo: Photo, out_dir: Path) -> Path:
    """Save ``photo`` as ``out_dir/NAME.png`` (RGB) once; return the path.

    Raises:
        PhotoNotAvailable: the file is not in this scikit-image install.
    """
    from PIL import Image

    path = out_dir / f"{photo.name}.png"
    if path.exists():
        return path
    src = skimage_data_dir() / photo.file
    if not src.exists():
        raise PhotoNotAvailable(f"scikit-image photo missing: {src}")
    out_dir.mkdir(parents=True, exist_ok=True)
    image = Image.open(src)
    if image.mode == "RGBA":  # composite transparent photos on white, not on black
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    tmp = path.with_suffix(".tmp.png")
    image.convert("RGB").save(tmp)
    tmp.replace(path)
    return path


def list_photos(out_dir: Path | None = None) -> list[tuple[Photo, Path]]:
    """Every bundled photo present in this install, exported as PNG: ``(photo, png_path)`` pairs."""
    from ray_app.settings import get_settings

    out_dir = out_dir or get_settings().data_dir / "photos"
    present = [p for p in PHOTOS if (skimage_data_dir() / p.file).exists()]
    return [(p, export_photo(p, out_dir)) for p in present]


def build_records(limit: int | None = None, out_dir: Path | None = None) -> Iterator[dict]:
    """Yield one record per bundled photo (image = the exported PNG's path)."""
    for i, (photo, path) in enumerate(list_photos(out_dir)):
        if limit is not None and i >= limit:
            break
        yield make_record(
            SOURCE,
            photo.name,
            title=photo.name.replace("_", " ").title(),
            text=photo.caption,
            url=URL,
            license=LICENSE,
            image=str(path),
            caption=photo.caption,
            metadata={"category": photo.category, "file": photo.file},
        )
