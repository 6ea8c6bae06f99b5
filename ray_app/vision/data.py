"""Image-encoder data shared by training (`training/clip.py`) and evaluation (`prism eval image-encoder`).

* The split is by stamp and deterministic (a hash of the stamp's name): held-out stamps are never
  seen in training, whatever the config.
* Stamps are decoded once into an RGBA "bank" (``(n, size, size, 4)`` uint8, transparent padding),
  cached under ``$PRISM_HOME/data/vision-cache/``, so training never touches PNG/SVG decoders.
* Augmentation runs on whole batches in torch: random scale/crop/position and horizontal flip (one
  affine warp), colour jitter on the clip art, then compositing on varied backgrounds (plain, white,
  gradient, smooth noise). Evaluation composites on white, centred, at a fixed fill.
* The zero-shot labels: one text per stamp category (the mean of a few prompt embeddings).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_app.corpus.stamps import Stamp, list_stamps, load_stamp_image

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HELDOUT_PERCENT = 15
EVAL_FILL = 0.85

LABEL_PROMPTS: dict[str, tuple[str, ...]] = {
    "animals": ("a picture of an animal.", "an animal such as a dog, a cat, a bird, a fish or an insect."),
    "clothes": ("a picture of clothes.", "clothing such as a shirt, a hat, a dress, a jacket or shoes."),
    "food": ("a picture of food.", "food such as fruit, vegetables, bread, cheese or a cake."),
    "hobbies": ("a picture of a hobby.", "a hobby such as music, a guitar, a drum, games or binoculars."),
    "household": ("a picture of a household object.", "things at home such as furniture, tools, a lamp or a kitchen pot."),
    "medical": ("a picture of medical equipment.", "medicine such as a syringe, a bandage, a thermometer or a tooth."),
    "military": ("a picture of military equipment.", "the army: a tank, a soldier, a gun, a bullet or a warplane."),
    "naturalforces": ("a picture of a natural force.", "forces of nature such as fire, lightning, an explosion or a storm."),
    "people": ("a picture of a person.", "people: a man, a woman, a child, a face or a body part."),
    "plants": ("a picture of a plant.", "plants such as a tree, a flower, a leaf or a mushroom."),
    "seasonal": ("a picture of a holiday decoration.", "holidays and seasons: Christmas, Halloween, Easter or Hanukkah."),
    "space": ("a picture of outer space.", "space: a planet, a star, the moon, a rocket or an astronaut."),
    "sports": ("a picture of sports equipment.", "sports: a ball, a bat, a racket, a helmet or a skateboard."),
    "symbols": ("a picture of a symbol.", "symbols such as a letter, a number, a sign, a flag or a coin."),
    "town": ("a picture of a town.", "a town: a house, a building, a tower, a shop or a road sign."),
    "vehicles": ("a picture of a vehicle.", "vehicles such as a car, a truck, a bicycle, a boat or a train."),
}
CATEGORIES: tuple[str, ...] = tuple(sorted(LABEL_PROMPTS))


def is_heldout(name: str, percent: int = HELDOUT_PERCENT) -> bool:
    """Whether a stamp (by name) belongs to the held-out split: a stable hash, not a random draw."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def split_stamps(stamps: list[Stamp] | None = None) -> tuple[list[Stamp], list[Stamp]]:
    """``(train, heldout)`` stamps of the 16 categories; the same split for every run and every caller."""
    stamps = [s for s in (stamps if stamps is not None else list_stamps()) if s.category in LABEL_PROMPTS]
    train = [s for s in stamps if not is_heldout(s.name)]
    heldout = [s for s in stamps if is_heldout(s.name)]
    return train, heldout


def list_extra_images(sources: list[str] | tuple[str, ...], skip_folders: tuple[str, ...] = ()) -> list[Stamp]:
    """Captioned images of the ``openclipart`` and ``emoji`` sources, as :class:`Stamp` items for the bank.

    Their category is a stamp category or ``""`` (no label); names are prefixed with the source, so
    the held-out hash (:func:`is_heldout`) splits them like stamps.

    Args:
        sources: any of ``"openclipart"``, ``"emoji"``.
        skip_folders: Open Clip Art folders (and their subfolders) to leave out, e.g. ``"computer"``.

    Raises:
        Unavailable: a source's Debian package is not installed.
    """
    items: list[Stamp] = []
    for source in sources:
        if source == "openclipart":
            from ray_app.corpus import openclipart

            for art in openclipart.list_cliparts():
                if any(art.folder == f or art.folder.startswith(f + "/") for f in skip_folders):
                    continue
                items.append(Stamp(art.path, art.caption, art.category or "", f"openclipart/{art.name}"))
        elif source == "emoji":
            from ray_app.corpus import emoji

            for item, path in emoji.list_rendered():
                items.append(Stamp(path, item.name, item.category or "", f"emoji/{item.key}"))
        else:
            raise ValueError(f"unknown image source {source!r}: expected openclipart or emoji")
    return items


def split_extra_images(items: list[Stamp]) -> tuple[list[Stamp], list[Stamp]]:
    """``(train, heldout)`` extra images by the same name hash as the stamps."""
    return [s for s in items if not is_heldout(s.name)], [s for s in items if is_heldout(s.name)]


def subsample(stamps: list[Stamp], limit: int | None) -> list[Stamp]:
    """At most ``limit`` stamps, spread evenly over the sorted list (so every category keeps some)."""
    if limit is None or limit >= len(stamps):
        return list(stamps)
    idx = np.linspace(0, len(stamps) - 1, limit).round().astype(int)
    return [stamps[i] for i in idx]


def label_texts() -> list[str]:
    """All zero-shot prompts, flattened in category order (see :func:`label_vectors`)."""
    return [p for c in CATEGORIES for p in LABEL_PROMPTS[c]]


def label_vectors(embed) -> np.ndarray:
    """``(16, d)`` unit vectors, one per category: the mean of its prompts' embeddings.

    Args:
        embed: a function ``list[str] -> (n, d) array`` (e.g. ``TextEmbedder.embed``).
    """
    vecs = np.asarray(embed(label_texts()), dtype=np.float32)
    out, start = [], 0
    for c in CATEGORIES:
        n = len(LABEL_PROMPTS[c])
        out.append(vecs[start : start + n].mean(axis=0))
        start += n
    out = np.stack(out)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# --- the decoded image bank -------------------------------------------------------------------


def fit_square_rgba(image, size: int) -> np.ndarray:
    """Fit a PIL image inside a transparent ``size`` x ``size`` square (aspect kept, centred)."""
    from PIL import Image

    image = image.convert("RGBA")
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(image, ((size - w) // 2, (size - h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def square_photo_rgba(image, size: int) -> np.ndarray:
    """Centre-crop a photo to a square and resize; fully opaque RGBA."""
    from PIL import Image

    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGBA"), dtype=np.uint8)


@dataclass
class StampBank:
    """Decoded stamps: ``images[i]`` (size x size x 4, uint8) belongs to ``stamps[i]``."""

    stamps: list[Stamp]
    images: np.ndarray


def bank_cache_path(stamps: list[Stamp], size: int, cache_dir: Path) -> Path:
    key = hashlib.sha1("\n".join(s.name for s in stamps).encode()).hexdigest()[:12]
    return cache_dir / f"stamps-{size}px-{len(stamps)}-{key}.npz"


def load_stamp_bank(stamps: list[Stamp], size: int, cache_dir: Path | None = None) -> StampBank:
    """Decode ``stamps`` at ``size`` px (cached in an ``.npz``); stamps that fail to decode are dropped."""
    from ray_app.settings import get_settings

    cache_dir = cache_dir or get_settings().data_dir / "vision-cache"
    path = bank_cache_path(stamps, size, cache_dir)
    by_name = {s.name: s for s in stamps}
    if path.exists():
        data = np.load(path, allow_pickle=False)
        return StampBank([by_name[n] for n in data["names"]], data["images"])
    kept, images = [], []
    for stamp in stamps:
        try:
            images.append(fit_square_rgba(load_stamp_image(stamp, max_side=max(4 * size, 128)), size))
            kept.append(stamp)
        except ValueError as exc:
            log.warning("skipping stamp: %s", exc)
    arr = np.stack(images) if images else np.zeros((0, size, size, 4), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, names=np.array([s.name for s in kept]), images=arr)
    tmp.replace(path)
    return StampBank(kept, arr)


def composite_on_white(rgba: np.ndarray, fill: float = EVAL_FILL):
    """The evaluation view of a bank image: centred at ``fill`` of the side, on white, as a PIL RGB image."""
    from PIL import Image

    size = rgba.shape[0]
    inner = max(1, round(size * fill))
    stamp = Image.fromarray(rgba, "RGBA").resize((inner, inner), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(stamp, ((size - inner) // 2, (size - inner) // 2))
    return canvas.convert("RGB")


# --- batch augmentation in torch --------------------------------------------------------------


def _normalize(rgb):
    import torch

    mean = torch.tensor(CLIP_MEAN, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb - mean) / std


def load_background_photos(size: int, names: tuple[str, ...] | None = None) -> np.ndarray:
    """``(k, size, size, 3)`` uint8 squares of the bundled skimage photos used as training backgrounds.

    The evaluation's texture photos (:data:`TEXTURE_PHOTOS`) are left out by default, so the held-out
    "background" views stay backgrounds the tower has never been trained on.
    """
    from PIL import Image

    from ray_app.corpus.photos import skimage_data_dir

    out = []
    for name in names or TRAIN_BACKGROUND_PHOTOS:
        photo = Image.open(skimage_data_dir() / name).convert("RGB")
        side = min(photo.size)
        left, top = (photo.width - side) // 2, (photo.height - side) // 2
        photo = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        out.append(np.asarray(photo, dtype=np.uint8))
    return np.stack(out)


def photo_backgrounds(photos, n: int, size: int, gen):
    """``(n, 3, size, size)`` random windows (a quarter to all of the side, mirrored at random) of ``photos``."""
    import torch
    import torch.nn.functional as F

    pick = torch.randint(0, photos.shape[0], (n,), generator=gen)
    src = photos[pick].permute(0, 3, 1, 2).float() / 255.0
    zoom = 0.25 + 0.75 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - zoom).unsqueeze(1)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = zoom * sign, zoom, shift
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_backgrounds(n: int, size: int, gen, photos=None):
    """``(n, 3, size, size)`` backgrounds in [0, 1]: plain colours, white, gradients, smooth noise and, when
    ``photos`` (``(k, s, s, 3)`` uint8, :func:`load_background_photos`) are given, windows of real photos."""
    import torch
    import torch.nn.functional as F

    kind = torch.randint(0, 4 if photos is None else 5, (n,), generator=gen)
    c1, c2 = torch.rand(n, 3, 1, 1, generator=gen), torch.rand(n, 3, 1, 1, generator=gen)
    plain = c1.expand(n, 3, size, size)
    white = torch.ones(n, 3, size, size)
    ramp = torch.linspace(0, 1, size).view(1, 1, size, 1)
    angle = torch.rand(n, 1, 1, 1, generator=gen) < 0.5
    ramp = torch.where(angle, ramp, ramp.transpose(2, 3))
    gradient = c1 + (c2 - c1) * ramp
    noise = F.interpolate(torch.rand(n, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear", align_corners=False)
    kinds = [plain, white, gradient.expand(n, 3, size, size), noise]
    if photos is not None:
        kinds.append(photo_backgrounds(photos, n, size, gen))
    stacked = torch.stack(kinds, dim=1)
    return stacked[torch.arange(n), kind]


def jitter_colours(rgb, gen, strength: float):
    """Random brightness, contrast and saturation per image (``strength`` 0 disables it)."""
    import torch

    if strength <= 0:
        return rgb
    n = rgb.shape[0]

    def factor():
        return 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * strength

    rgb = rgb * factor()
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = (rgb - mean) * factor() + mean
    grey = rgb.mean(dim=1, keepdim=True)
    rgb = (rgb - grey) * factor() + grey
    return rgb.clamp(0, 1)


def augment_batch(rgba_u8, out_size: int, gen, scale=(0.55, 1.1), jitter: float = 0.3, flip: bool = True,
                  rotation: float = 0.0, photos=None):
    """Turn a batch of bank images into normalised training inputs.

    One affine warp per image does the random scale (values above 1 crop into the clip art), the
    random position, the rotation and the horizontal flip; then colour jitter and a random background.

    Args:
        rgba_u8: ``(n, s, s, 4)`` uint8 tensor.
        out_size: side of the output images.
        gen: a ``torch.Generator`` (the only source of randomness, so runs are reproducible).
        scale: range of the clip art's size relative to the canvas.
        jitter: colour-jitter strength.
        flip: allow horizontal flips.
        rotation: largest rotation in degrees, either way (0 disables).
        photos: optional ``(k, s, s, 3)`` uint8 tensor of photos whose windows become one more background kind.

    Returns:
        ``(n, 3, out_size, out_size)`` float32, normalised with the CLIP mean/std.
    """
    import torch
    import torch.nn.functional as F

    n = rgba_u8.shape[0]
    x = rgba_u8.permute(0, 3, 1, 2).float() / 255.0
    alpha = x[:, 3:4]
    x = torch.cat([x[:, :3] * alpha, alpha], dim=1)  # premultiplied: no dark fringes when resampling
    s = scale[0] + torch.rand(n, generator=gen) * (scale[1] - scale[0])
    inv = 1.0 / s
    room = (1.0 - s).clamp(min=0) / s  # how far the art may move and stay inside the canvas
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * room.unsqueeze(1)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)  # output -> input coordinates: scale, then rotate, then flip
    theta[:, 0, 0], theta[:, 0, 1] = inv * cos * sign, -inv * sin * sign
    theta[:, 1, 0], theta[:, 1, 1] = inv * sin, inv * cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (n, 4, out_size, out_size), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    a = warped[:, 3:4]
    rgb = jitter_colours(warped[:, :3] / a.clamp(min=1e-4), gen, jitter) * a
    out = rgb + (1 - a) * random_backgrounds(n, out_size, gen, photos)
    return _normalize(out)


def eval_batch(rgba_u8, out_size: int, fill: float = EVAL_FILL):
    """Deterministic view (centred, on white) as a normalised tensor; matches :func:`composite_on_white`."""
    import torch

    images = [composite_on_white(im, fill) for im in rgba_u8]
    if images and images[0].size[0] != out_size:
        from PIL import Image

        images = [im.resize((out_size, out_size), Image.Resampling.BICUBIC) for im in images]
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    return _normalize(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())


# --- transformed views for evaluation (PIL, deterministic per seed) --------------------------

VIEW_KINDS: tuple[str, ...] = ("mirror", "scale", "rotate", "crop", "background", "combined")
TEXTURE_PHOTOS = ("grass.png", "brick.png", "gravel.png")
# Training backgrounds (``data.photo_backgrounds``): other bundled photos, never the evaluation's textures.
TRAIN_BACKGROUND_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
                           "retina.jpg", "motorcycle_left.png", "coins.png", "camera.png", "moon.png", "page.png")


def view_background(size: int, rng: np.random.Generator):
    """A non-white background: a plain colour, a two-colour gradient, or a bundled texture photo (grass, brick, gravel)."""
    from PIL import Image

    kind = rng.integers(0, 3)
    if kind == 0:
        return Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    if kind == 1:
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, size)[:, None, None] * np.ones((1, size, 1))
        if rng.random() < 0.5:
            ramp = ramp.transpose(1, 0, 2)
        return Image.fromarray((c1 + (c2 - c1) * ramp).astype(np.uint8), "RGB")
    from ray_app.corpus.photos import skimage_data_dir

    path = skimage_data_dir() / TEXTURE_PHOTOS[int(rng.integers(0, len(TEXTURE_PHOTOS)))]
    photo = Image.open(path).convert("RGB")
    side = min(photo.size)
    left, top = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
    return photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)


def transformed_view(rgba: np.ndarray, kind: str, rng: np.random.Generator):
    """One view of a bank image as a user might photograph or edit it, as a PIL RGB image.

    ``mirror``: flipped left-right; ``scale``: 0.5-1.0 of the evaluation size at a random place;
    ``rotate``: 10-25 degrees either way; ``crop``: a random 65-85 % window of the evaluation view,
    resized back; ``background``: on a plain colour, a gradient or a texture photo instead of white;
    ``combined``: mirrored, scaled, rotated (up to 25 degrees) and on another background.

    Raises:
        ValueError: an unknown ``kind``.
    """
    from PIL import Image, ImageOps

    if kind not in VIEW_KINDS:
        raise ValueError(f"unknown view kind {kind!r}: expected one of {', '.join(VIEW_KINDS)}")
    size = rgba.shape[0]
    if kind == "crop":
        view = composite_on_white(rgba)
        side = int(round(size * rng.uniform(0.65, 0.85)))
        left, top = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        return view.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    stamp = Image.fromarray(rgba, "RGBA")
    mirror = kind in ("mirror", "combined")
    scale = rng.uniform(0.5, 1.0) if kind in ("scale", "combined") else 1.0
    angle = 0.0
    if kind == "rotate":
        angle = rng.uniform(10, 25) * rng.choice([-1, 1])
    elif kind == "combined":
        angle = rng.uniform(-25, 25)
    if mirror:
        stamp = ImageOps.mirror(stamp)
    inner = max(1, round(size * EVAL_FILL * scale))
    stamp = stamp.resize((inner, inner), Image.Resampling.LANCZOS)
    if angle:
        stamp = stamp.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        if max(stamp.size) > size:
            stamp.thumbnail((size, size), Image.Resampling.LANCZOS)
    background = view_background(size, rng) if kind in ("background", "combined") else Image.new("RGB", (size, size), "white")
    canvas = background.convert("RGBA")
    room_x, room_y = size - stamp.width, size - stamp.height
    at = ((room_x // 2, room_y // 2) if scale == 1.0 else (int(rng.integers(0, room_x + 1)), int(rng.integers(0, room_y + 1))))
    canvas.alpha_composite(stamp, at)
    return canvas.convert("RGB")


# --- unrelated pictures for calibration (no right label in any vocabulary) --------------------

UNRELATED_KINDS: tuple[str, ...] = ("noise", "blurred_noise", "gradient", "stripes", "checkerboard", "solid", "shapes")


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _unrelated_pixels(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """``(height, width, 3)`` uint8 pixels of one unrelated picture of ``kind`` (see :func:`unrelated_picture`)."""
    from PIL import Image

    if kind in ("noise", "blurred_noise"):
        cell = int(rng.choice([1, 2, 4, 8, 16])) if kind == "noise" else int(rng.choice([8, 16, 32]))
        small = rng.integers(0, 256, (max(1, height // cell), max(1, width // cell), 3), dtype=np.uint8)
        resample = Image.Resampling.NEAREST if kind == "noise" else Image.Resampling.BICUBIC
        return np.asarray(Image.fromarray(small, "RGB").resize((width, height), resample))
    if kind == "gradient":
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        angle = rng.uniform(0, np.pi)
        y, x = np.mgrid[0:height, 0:width]
        t = x * np.cos(angle) + y * np.sin(angle)
        t = ((t - t.min()) / max(1e-9, np.ptp(t)))[..., None]
        return (c1 + (c2 - c1) * t).astype(np.uint8)
    if kind in ("stripes", "checkerboard"):
        period = int(rng.integers(4, max(5, min(width, height) // 3)))
        y, x = np.mgrid[0:height, 0:width]
        if kind == "stripes":
            angle = rng.uniform(0, np.pi)
            on = ((x * np.cos(angle) + y * np.sin(angle)) // period).astype(int) % 2 == 0
        else:
            on = (x // period + y // period) % 2 == 0
        return np.where(on[..., None], np.array(_random_colour(rng)), np.array(_random_colour(rng))).astype(np.uint8)
    if kind == "solid":
        return np.broadcast_to(np.array(_random_colour(rng), dtype=np.uint8), (height, width, 3)).copy()
    return _random_shapes(width, height, rng)


def _random_shapes(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Random ellipses, rectangles, polygons and lines on a plain background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), _random_colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 7))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        shape = int(rng.integers(0, 4))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=_random_colour(rng))
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=_random_colour(rng))
        elif shape == 2:
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=_random_colour(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=_random_colour(rng), width=int(rng.integers(1, 8)))
    return np.asarray(image)


def unrelated_picture(kind: str, rng: np.random.Generator):
    """A PIL RGB picture of nothing the corpus names, as a user might upload by mistake, at a random size.

    ``noise``: uniform random pixels in cells of 1-16 px; ``blurred_noise``: smooth random colour fields;
    ``gradient``: a two-colour ramp at a random angle; ``stripes`` / ``checkerboard``: two colours at a random
    period (stripes at a random angle); ``solid``: one colour; ``shapes``: 1-6 random ellipses, rectangles,
    polygons and lines on a plain background.

    Raises:
        ValueError: an unknown ``kind``.
    """
    from PIL import Image

    if kind not in UNRELATED_KINDS:
        raise ValueError(f"unknown unrelated picture kind {kind!r}: expected one of {', '.join(UNRELATED_KINDS)}")
    width, height = (int(v) for v in rng.integers(64, 257, 2))
    return Image.fromarray(_unrelated_pixels(kind, width, height, rng), "RGB")


def unrelated_pictures(per_kind: int, seed: int = 0) -> list[tuple[str, object]]:
    """``(name, PIL image)`` for ``per_kind`` pictures of each :data:`UNRELATED_KINDS` kind, the same for a seed."""
    return [(f"unrelated/{kind}/{i}", unrelated_picture(kind, np.random.default_rng([seed, k, i])))
            for k, kind in enumerate(UNRELATED_KINDS) for i in range(per_kind)]
