"""
Data: a synthetic, object-centric stand-in for ImageNet, and a loader for real captioned image folders.

The paper trains text-to-image on ImageNet-1k alone: one main object per image, 1000 classes, either
with class-name captions ("AIO": "an image of a golden retriever") or with long VLM captions ("TA":
LLaVA describing objects, attributes, positions and background). To teach and test that recipe on a
CPU we replace ImageNet by a rendered world with the same structure:

    class  = shape   in SHAPES   (8 "ImageNet classes": circle, square, triangle, star, ...)
    colour = color   in COLORS   (the 10 GenEval colors, so GenEval-style prompts are answerable)
    object = Obj(shape, color, size, x, y, rotation)     size = radius as a fraction of the side
    scene  = Scene(objects, background, tone)            backgrounds are gray tones only

Rendering is antialiased by supersampling: every object's coverage alpha_k in [0,1] is drawn with PIL
at ss = 4x the output side and box-averaged down; the image is composited back to front,

    I = bg * prod_k (1 - alpha_k) + sum_k color_k * alpha_k * prod_{j>k} (1 - alpha_j),

and the visible mask of object k (render_masks) is  alpha_k * prod_{j>k} (1 - alpha_j) >= 1/2.

Captions are written from the scene's ground truth, so they are exact:
    class_caption: "a photo of a star"                                   (the AIO baseline)
    long_caption:  size, color, shape, position of each object, the background, rotation, and for
                   two or more objects the GenEval relations "to the left of" / "to the right of" /
                   "above" / "below" (dominant axis of the centre difference).   (the TA stand-in)
Spelling is American throughout ("color", "center", "gray"), as in GenEval prompts.

Tensors: images are uint8 (H, W, 3) in storage; models see float (3, H, W) in [-1, 1] (to_tensor).
"""
import json
import math
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw

#################################################################################
#                                 The Synthetic World                           #
#################################################################################

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "crescent")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35), "orange": (255, 140, 0), "yellow": (250, 220, 30), "green": (35, 165, 60),
    "blue": (35, 80, 230), "purple": (140, 50, 190), "pink": (255, 135, 195), "brown": (125, 75, 30),
    "black": (15, 15, 15), "white": (245, 245, 245),
}

# Gray tones only (luminance 87..173, zero saturation): every object color stays readable on them.
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "stripes", "checker", "speckle")

# Representative radii (fraction of the side); size_name cuts halfway between them.
SIZES: dict[str, float] = {"small": 0.18, "medium": 0.25, "large": 0.32}


@dataclass(frozen=True)
class Obj:
    shape: str              # one of SHAPES
    color: str              # key of COLORS
    size: float             # radius (half-extent) as a fraction of the image side
    x: float                # centre, fraction of width, 0 = left
    y: float                # centre, fraction of height, 0 = top
    rotation: float = 0.0   # degrees, counterclockwise as seen on screen


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    tone: float = 0.5       # background brightness / texture phase in [0, 1]


def _heart(n: int = 48) -> np.ndarray:
    # The classic parametric heart, flipped so that it points down in image coordinates (y down).
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    p = np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    p -= (p.max(0) + p.min(0)) / 2
    return p / np.abs(p).max()


def _star(points: int = 5, inner: float = 0.47) -> np.ndarray:
    # A fat star (inner/outer 0.47 rather than the pentagram's 0.38) keeps its points visible at 32x32.
    a = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


# Unit polygons (y down), scaled by the radius; circle and crescent are drawn as discs instead.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": np.array([(0.0, -0.95), (0.97, 0.75), (-0.97, 0.75)]),
    "star": _star(),
    "heart": _heart(),
    "cross": np.array([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3),      # a plus sign
                       (.3, 1), (-.3, 1), (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)]),
    "diamond": np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]),           # elongated: never a square
}
_CRESCENT_BITE = (0.42, 0.82)  # the bite: a disc of radius 0.82 whose centre is 0.42 to the right (before rotation)

#################################################################################
#                                      Rendering                                #
#################################################################################

_SS = 4  # supersampling factor


def _rotate(p: np.ndarray, degrees: float) -> np.ndarray:
    # Counterclockwise on screen; with y pointing down that is R = [[c, s], [-s, c]] acting on column vectors.
    # p holds one point per row, so it is multiplied by the transpose: p @ R.T.
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return p @ np.array([[c, -s], [s, c]])


def _coverage(obj: Obj, size: int) -> np.ndarray:
    """float32 (size, size) in [0, 1]: the fraction of each pixel covered by the object."""
    side = size * _SS
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = obj.x * side, obj.y * side, obj.size * side
    if obj.shape in ("circle", "crescent"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if obj.shape == "crescent":
            (dx, dy), = _rotate(np.array([[_CRESCENT_BITE[0], 0.0]]), obj.rotation) * r
            rb = _CRESCENT_BITE[1] * r
            draw.ellipse((cx + dx - rb, cy + dy - rb, cx + dx + rb, cy + dy + rb), fill=0)
    else:
        p = _rotate(_POLYGONS[obj.shape], obj.rotation) * r + (cx, cy)
        draw.polygon([tuple(q) for q in p.tolist()], fill=255)
    return np.asarray(canvas.reduce(_SS), dtype=np.float32) / 255.0


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Supersample centres in [0, 1] (y down), cached: every background of a size shares them.
    u = (np.arange(size * _SS, dtype=np.float32) + 0.5) / (size * _SS)
    return np.meshgrid(u, u, indexing="xy")


def _background(name: str, tone: float, size: int) -> np.ndarray:
    """float32 (size, size) gray level. tone sets the brightness; its digits set the texture phase."""
    level = 105.0 + 50.0 * tone
    if name == "plain":
        return np.full((size, size), level, np.float32)
    if name == "speckle":  # per-pixel grain: no supersampling needed
        noise = np.random.default_rng(int(tone * 2**31)).uniform(-1, 1, (size, size))
        return (level + 14.0 * noise).astype(np.float32)
    X, Y = _grid(size)
    phase = (tone * 97.0) % 1.0
    if name == "gradient":
        a = 2 * np.pi * phase
        v = level + 18.0 * ((X - 0.5) * math.cos(a) + (Y - 0.5) * math.sin(a)) / 0.7071
    elif name == "stripes":
        period = 1.0 / (5 + 3 * ((tone * 13.0) % 1.0))
        proj = (X, Y, (X + Y) / 1.4142)[int(phase * 3)]
        v = level + 18.0 * np.sign(np.sin(2 * np.pi * (proj / period + phase)))
    elif name == "checker":
        cell = 1.0 / (4 + 3 * ((tone * 13.0) % 1.0))
        v = level + 16.0 * (1 - 2 * ((np.floor(X / cell) + np.floor(Y / cell)) % 2))
    else:
        raise ValueError(f"unknown background {name!r}; expected one of {BACKGROUNDS}")
    return v.reshape(size, _SS, size, _SS).mean((1, 3))


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """uint8 (size, size, 3): the scene composited back to front over its background, antialiased."""
    image = np.repeat(_background(scene.background, scene.tone, size)[..., None], 3, axis=2)
    for obj in scene.objects:
        alpha = _coverage(obj, size)[..., None]
        image = image * (1 - alpha) + np.asarray(COLORS[obj.color], np.float32) * alpha
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def render_masks(scene: Scene, size: int = 32) -> np.ndarray:
    """bool (n_objects, size, size): pixels where object k is the visible majority (later objects occlude)."""
    visible = np.zeros((len(scene.objects), size, size), np.float32)
    for k, obj in enumerate(scene.objects):
        alpha = _coverage(obj, size)
        visible[:k] *= 1 - alpha
        visible[k] = alpha
    return visible >= 0.5


# How a synthetic scene places its one object: radius range, centre 0.5 +- jitter, tilt +- degrees.
# "varied" is the harder world, ImageNet-like in its variety. "centered" is easier: larger objects near the centre,
# upright; there the tiny model starts to draw the shapes within thousands of CPU steps. "large" is a close-up of
# the same: the object spans 3 of the 4 patch-8 tokens across, so its outline falls inside more tokens; with it
# train.py's cpu preset draws about twice the shapes in ~1400 steps (docs/experiments.md, "Large objects").
OBJECT_RANGES: dict[str, dict] = {
    "varied": dict(radius=(0.15, 0.36), jitter=0.15, tilt=30.0),
    "centered": dict(radius=(0.2, 0.36), jitter=0.08, tilt=8.0),
    "large": dict(radius=(0.26, 0.38), jitter=0.06, tilt=8.0),
}


def random_scene(rng: np.random.Generator, objects: str = "varied") -> Scene:
    """One object-centric scene, like an ImageNet photo, its object drawn from OBJECT_RANGES[objects]."""
    if objects not in OBJECT_RANGES:
        raise ValueError(f"unknown objects {objects!r}; expected one of {tuple(OBJECT_RANGES)}")
    r = OBJECT_RANGES[objects]
    obj = Obj(shape=SHAPES[rng.integers(len(SHAPES))], color=list(COLORS)[rng.integers(len(COLORS))],
              size=float(rng.uniform(*r["radius"])), x=float(0.5 + rng.uniform(-r["jitter"], r["jitter"])),
              y=float(0.5 + rng.uniform(-r["jitter"], r["jitter"])), rotation=float(rng.uniform(-r["tilt"], r["tilt"])))
    return Scene((obj,), BACKGROUNDS[rng.integers(len(BACKGROUNDS))], float(rng.uniform()))

#################################################################################
#                                   Words for Scenes                            #
#################################################################################


def size_name(size: float) -> str:
    if size < (SIZES["small"] + SIZES["medium"]) / 2:
        return "small"
    return "medium" if size < (SIZES["medium"] + SIZES["large"]) / 2 else "large"


def position_name(x: float, y: float) -> str:
    """Thirds of the frame name strong positions; inside the middle third, offsets > 0.07 are "slightly"."""
    dx, dy = x - 0.5, y - 0.5
    h = "left" if dx < -1 / 6 else "right" if dx > 1 / 6 else ""
    v = "top" if dy < -1 / 6 else "bottom" if dy > 1 / 6 else ""
    if h and v:
        return f"in the {v}-{h} corner"
    if h:
        return f"on the {h}"
    if v:
        return f"at the {v}"
    if max(abs(dx), abs(dy)) <= 0.07:
        return "in the center"
    if abs(dx) >= abs(dy):
        return f"slightly {'left' if dx < 0 else 'right'} of center"
    return f"slightly {'above' if dy < 0 else 'below'} center"


def relation_name(ax: float, ay: float, bx: float, by: float) -> str:
    """GenEval relation of A to B from their centres, along the dominant axis: "A <relation> B"."""
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _a(phrase: str) -> str:
    # By the first letter, lowercased so folder names ("African_elephant") work; "uni"/"eu" sound like "you".
    vowel = phrase[:1].lower() in tuple("aeiou") and not phrase.lower().startswith(("uni", "eu"))
    return ("an " if vowel else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


_NOUNS = {"circle": ("circle", "circle", "filled circle"), "square": ("square", "square", "solid square"),
          "triangle": ("triangle",), "star": ("star", "star", "five-pointed star"),
          "heart": ("heart", "heart", "heart shape"), "cross": ("cross", "cross", "plus-shaped cross"),
          "diamond": ("diamond", "diamond", "diamond shape"), "crescent": ("crescent", "crescent", "crescent moon")}
_SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium-sized", "mid-sized"), "large": ("large", "big")}
_BG_WORDS = {"plain": "plain", "gradient": "gradient", "stripes": "striped", "checker": "checkered",
             "speckle": "speckled"}
_BG_PHRASES = {"plain": ("plain {t}", "solid {t}", "uniform {t}"),
               "gradient": ("{t} gradient", "softly shaded {t}", "smooth {t} gradient"),
               "stripes": ("striped {t}", "{t} striped", "{t} stripy"),
               "checker": ("checkered {t}", "{t} checkerboard", "{t} checkered"),
               "speckle": ("speckled {t}", "grainy {t}", "{t} speckled")}


def describe_object(obj: Obj, rng: np.random.Generator, with_size: bool = True, with_color: bool = True) -> str:
    """'a large red five-pointed star': article, size, color, and a noun that always contains the class name."""
    words = [_pick(rng, _SIZE_WORDS[size_name(obj.size)])] if with_size else []
    return _a(" ".join(words + [obj.color] * with_color + [_pick(rng, _NOUNS[obj.shape])]))


# Short captions open like typed prompts ("a photo of ..."), so GenEval-style prompts are in-distribution.
PROMPT_OPENINGS = ("", "", "", "a photo of ", "an image of ", "a picture of ")


def describe_background(scene: Scene, rng: np.random.Generator, short: bool = False) -> str:
    """'a plain dark gray background' (short: 'a striped background')."""
    if short:
        return _a(f"{_BG_WORDS[scene.background]} background")
    tone = "dark gray" if scene.tone < 0.35 else "light gray" if scene.tone > 0.65 else _pick(rng, ("gray", "mid-gray"))
    return _a(_pick(rng, _BG_PHRASES[scene.background]).format(t=tone) + " background")


def _tilt(obj: Obj, rng: np.random.Generator) -> str:
    """', tilted slightly to the left' or '' (symmetric circles and near-upright shapes are not worth a word)."""
    if obj.shape == "circle" or abs(obj.rotation) < 10:
        return ""
    side = "left" if obj.rotation > 0 else "right"
    degree = "slightly " if abs(obj.rotation) < 20 else ""
    return ", " + _pick(rng, (f"tilted {degree}to the {side}", f"leaning {degree}to the {side}",
                              f"rotated {degree}{'counterclockwise' if obj.rotation > 0 else 'clockwise'}"))


def class_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The AIO baseline: the class name of the (first) object in a template."""
    template = _pick(rng, ("a photo of a {}", "an image of a {}", "a picture of a {}", "a {}"))
    return template.format(scene.objects[0].shape)


def long_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The TA stand-in for a LLaVA caption: exact, varied, ~25% short and ~75% long."""
    objs = scene.objects
    if not objs:  # e.g. a crop that cut every object away
        return f"{_cap(describe_background(scene, rng))} with nothing on it."
    if rng.random() < 0.25:  # short, like a typed prompt; one in three leaves the color out, as people do
        with_color = rng.random() < 0.67
        things = " and ".join(describe_object(o, rng, rng.random() < 0.3, with_color) for o in objs)
        return _pick(rng, PROMPT_OPENINGS) + things + (
            " on " + describe_background(scene, rng, short=True) if rng.random() < 0.5 else "")
    bg = describe_background(scene, rng)
    if len(objs) == 1:
        o = objs[0]
        thing, where, tilt = describe_object(o, rng), position_name(o.x, o.y), _tilt(o, rng)
        sentences = _pick(rng, (
            (f"{_cap(thing)} {where}{tilt}, on {bg}.",),
            (f"The image shows {thing} {where}.", f"It is{tilt[1:] or ' upright'}." if rng.random() < 0.5 else "",
             f"{_cap(bg)} fills the rest of the frame."),
            (f"This is a simple picture of {describe_object(o, rng, with_size=False)}.",
             f"The {o.shape} is {_SIZE_WORDS[size_name(o.size)][0]} and sits {where}{tilt}, set against {bg}."),
            (f"A close-up of {thing} against {bg}.", f"The {o.shape} is {where}{tilt}."),
            (f"In this image, {thing} stands out {where} of the frame{tilt}." if where == "in the center"
             else f"In this image, {thing} stands out {where}{tilt}.", f"Behind it is {bg}."),
        ))
        return " ".join(s for s in sentences if s)
    # Two or more objects: list them with positions, then the relation between each consecutive pair.
    # Semicolons between objects, since an object's own tilt clause already uses a comma.
    parts = [f"{describe_object(o, rng)} {position_name(o.x, o.y)}{_tilt(o, rng)}" for o in objs]
    listed = " and ".join(parts) if len(parts) == 2 and "," not in parts[0] else \
        "; ".join(parts[:-1]) + "; and " + parts[-1]
    number = {2: "two", 3: "three", 4: "four"}.get(len(objs), str(len(objs)))
    sentences = [_pick(rng, (f"The image shows {number} objects: {listed}.",
                             f"There are {number} shapes here: {listed}.", f"{_cap(listed)}, on {bg}."))]
    for a, b in zip(objs[:-1], objs[1:]):
        sentences.append(f"The {a.color} {a.shape} is {relation_name(a.x, a.y, b.x, b.y)} the {b.color} {b.shape}.")
    if not sentences[0].endswith(f"on {bg}."):
        sentences.append(_pick(rng, (f"The rest of the image is {bg}.", f"They sit on {bg}.")))
    return " ".join(sentences)

#################################################################################
#                                Tensors and Datasets                           #
#################################################################################


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (3, H, W) or (B, 3, H, W) in [-1, 1] -> uint8 (H, W, 3) or (B, H, W, 3)."""
    x = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def image_grid(images: np.ndarray, cols: int, scale: int = 1) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one (rows*H*scale, cols*W*scale, 3) image, row-major; empty cells black.
    scale > 1 upscales by pixel repetition: small images stay honest (no smoothing)."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    canvas = np.zeros((rows * cols, h, w, c), np.uint8)
    canvas[:n] = images
    grid = canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
    return grid.repeat(scale, 0).repeat(scale, 1) if scale > 1 else grid


def save_png(image: "np.ndarray | Image.Image", path: str) -> None:
    """Write a PNG atomically (temporary file, then rename): a crash never leaves half an image."""
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


class SyntheticImageNet(torch.utils.data.Dataset):
    """A finite, seeded, object-centric stand-in for ImageNet; images pre-rendered into memory (uint8)."""

    def __init__(self, num_images: int = 20000, image_size: int = 32, seed: int = 0, objects: str = "varied"):
        # Separate streams for geometry and words: rewording captions never changes the images.
        scene_rng, text_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
        self.image_size = image_size
        self.scenes = [random_scene(scene_rng, objects) for _ in range(num_images)]
        self.labels = torch.tensor([SHAPES.index(s.objects[0].shape) for s in self.scenes], dtype=torch.long)
        self.images = torch.from_numpy(np.stack([render(s, image_size) for s in self.scenes])) if self.scenes \
            else torch.zeros(0, image_size, image_size, 3, dtype=torch.uint8)
        # ONE fixed caption of each kind per image, as with LLaVA recaptioning.
        self.class_captions = [class_caption(s, text_rng) for s in self.scenes]
        self.long_captions = [long_caption(s, text_rng) for s in self.scenes]

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].permute(2, 0, 1).float() / 127.5 - 1.0, "label": int(self.labels[i]),
                "index": i, "class_caption": self.class_captions[i], "long_caption": self.long_captions[i]}


_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


_HEADERS = ("image_path", "filename")  # a TSV may open with a header row "image_path<TAB>caption"


def _read_captions(path: str) -> list[tuple[int, str, str]]:
    """(line number, image path, caption) from TSV 'filename<TAB>caption' or JSONL {"image_path", "caption"}."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is not part of line 1
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                if line.lstrip().startswith("{"):
                    row = json.loads(line)
                    name, caption = row["image_path"], row["caption"]
                    if not isinstance(name, str) or not isinstance(caption, str):
                        raise ValueError(f"image_path and caption must be strings, got {type(name).__name__} "
                                         f"and {type(caption).__name__}")
                else:
                    name, caption = line.split("\t", 1)
                    if n == 1 and name.strip().lower() in _HEADERS and caption.strip().lower() == "caption":
                        continue
                rows.append((n, name.strip(), caption.strip()))
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{n}: expected 'filename<TAB>caption' or a JSON object with "
                                 f"'image_path' and 'caption' ({e})") from None
    return rows


def _path_parts(path: str) -> list[str]:
    # Backslashes first (Windows-made caption files), then split; "" and "." parts say nothing about the place.
    return [part for part in path.replace("\\", "/").split("/") if part not in ("", ".")]


class ImageFolderCaptions(torch.utils.data.Dataset):
    """Real images: root/<class>/*.{jpg,jpeg,png}; captions from TSV (filename<TAB>caption, an optional header
    row) or JSONL ({"image_path", "caption"}). Images without a caption row keep their class caption."""

    def __init__(self, root: str, caption_file: str | None = None, image_size: int = 256):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.root, self.image_size = root, image_size
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.paths, labels = [], []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.lower().endswith(_IMAGE_EXTENSIONS))
            self.paths += [os.path.join(root, name, f) for f in files]
            labels += [label] * len(files)
        if not self.paths:
            raise ValueError(f"no images (*.jpg, *.jpeg, *.png) in class folders under {root}")
        self.labels = torch.tensor(labels, dtype=torch.long)
        # Folder names become words: "golden_retriever" reads "a photo of a golden retriever". A WordNet id
        # stays as is ("a photo of a n01440764"): a token the model can bind to the class, but not English;
        # rename the folders (or give a caption file) for real class names.
        self.class_captions = [f"a photo of {_a(self.classes[y].replace('_', ' ').replace('-', ' '))}" for y in labels]
        self.long_captions = list(self.class_captions)
        if caption_file is not None:
            self._match_captions(caption_file)
        # Per process: each DataLoader worker holds its own copy, so a bad file is reported once per worker.
        self._unreadable: set[int] = set()

    def _match_captions(self, caption_file: str) -> None:
        """Set long_captions from the file; rows name 'class/file' (any prefix must be the end of root) or 'file'."""
        if not os.path.isfile(caption_file):
            raise FileNotFoundError(f"caption file not found: {caption_file}")
        by_path = {os.path.relpath(p, self.root).replace(os.sep, "/"): i for i, p in enumerate(self.paths)}
        by_name: dict[str, list[int]] = {}
        for i, p in enumerate(self.paths):
            by_name.setdefault(os.path.basename(p), []).append(i)
        root_parts = _path_parts(os.path.abspath(self.root))
        captioned = set()
        for n, name, caption in _read_captions(caption_file):
            parts = _path_parts(name)
            if len(parts) == 1:  # a bare file name: ImageNet's are unique, but two classes may share one here
                found = by_name.get(parts[0], [])
                if len(found) > 1:
                    shared = ", ".join(os.path.relpath(self.paths[i], self.root).replace(os.sep, "/") for i in found)
                    raise ValueError(f"{caption_file}:{n}: image name {name!r} is ambiguous (shared by {shared}); "
                                     f"name the image as 'class/file'")
                i = found[0] if found else None
            else:
                # The class is part of the match: a row for "bird/0.png" must never land on "dog/0.png". A leading
                # prefix is allowed only where it names root itself ("train/n01/x.JPEG" under .../train).
                prefix = parts[:-2]
                at_root = len(prefix) <= len(root_parts) and root_parts[len(root_parts) - len(prefix):] == prefix
                i = by_path.get("/".join(parts[-2:])) if at_root else None
            if i is None:
                raise ValueError(f"{caption_file}:{n}: caption for image {name!r}, which does not exist under "
                                 f"{self.root}")
            if i in captioned:  # one caption per image: a second row is a mistake in the file, not a choice
                raise ValueError(f"{caption_file}:{n}: a second caption for image {name!r}")
            self.long_captions[i] = caption
            captioned.add(i)
        if len(captioned) < len(self.paths):
            warnings.warn(f"{len(self.paths) - len(captioned)} of {len(self.paths)} images got no caption from "
                          f"{caption_file}; they keep their class caption", stacklevel=3)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: str) -> torch.Tensor:
        # Resize the shorter side to image_size, then centre-crop: the ImageNet 256 protocol.
        with Image.open(path) as im:
            im = im.convert("RGB")
            s = self.image_size / min(im.size)
            w, h = max(self.image_size, round(im.width * s)), max(self.image_size, round(im.height * s))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
            im = im.crop((left, top, left + self.image_size, top + self.image_size))
            return to_tensor(np.array(im))  # a writable copy: torch warns on read-only buffers

    def __getitem__(self, i: int) -> dict:
        # A corrupt file must not kill a DataLoader worker: warn once per file (per worker process, see
        # __init__) and serve the next readable one.
        for j in (k % len(self) for k in range(i, i + len(self))):
            if j in self._unreadable:
                continue
            try:
                image = self._load(self.paths[j])
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                self._unreadable.add(j)
                warnings.warn(f"skipping unreadable image {self.paths[j]} ({type(e).__name__}: {e}); "
                              f"{len(self._unreadable)} unreadable so far", RuntimeWarning)
                continue
            return {"image": image, "label": int(self.labels[j]), "index": j,
                    "class_caption": self.class_captions[j], "long_caption": self.long_captions[j]}
        raise RuntimeError(f"no readable image under {self.root}")
