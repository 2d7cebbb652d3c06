"""A small captioned world: multi-label scenes of coloured, textured shapes with structured co-occurrence.

No real CLIP weights or VOC/COCO images reach the machines this project is built on, so the synthetic
world stands in for both: ``capnet.world.pretrain`` trains a tiny open_clip model contrastively on its
captions, and long-tailed multi-label experiments sample its scenes with skewed class frequencies.

Each of the 20 classes (``SCENE_CLASSES``) is a fixed signature of shape, colour, texture and size, and
its name is its full phrase ("red star", "small yellow circle", "striped square"); zero-shot prompts are
built from those names with ``SCENE_TEMPLATES``. Every class name starts with a consonant, so "a {}" is
always grammatical. Textured classes (striped, checkered, dotted) take a random colour per instance that
captions never name: texture and shape decide the class.

Captions are alt-text: they name a subset of the objects, the most visible one almost always and the
others with a chance that falls with their visible area, each in varied wording (its class phrase,
synonyms, attributes left out, or a coarse word such as "shape"); ``Scene.mentions`` records which
classes each naming is true of. The model card (checkpoints/capnet-synth.md) says why.

A scene holds one to four objects of distinct classes on a solid, gradient or noise-texture background,
with partial occlusion (objects overlap, thin clutter bars cross them, some are cut by the border) and
pixel noise. Co-occurrence is structured: the classes form ten fixed pairs (``COOCCURRING_PAIRS``) and
each further object is, with probability ``SceneSpec.cooccurrence``, the partner of an object already in
the scene. The pairing is a perfect matching, so with uniform class probabilities every class is equally
frequent; with skewed ``class_probs`` (the tiny CLIP's Zipf pretraining concepts, a world's natural
distribution ``natural_probs``) a tail class whose partner is a head class appears more often than its
own probability says, as in COCO.

Scene ``i`` of seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``: it never depends on how many
scenes are drawn with it, so the first 200 scenes of a test set are the same whether 200 or 1,000 are made.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

__all__ = [
    "CLASS_SIGNATURES",
    "COOCCURRING_PAIRS",
    "SCENE_CLASSES",
    "SCENE_TEMPLATES",
    "ClassSignature",
    "SceneObject",
    "NATURAL_SPEC",
    "Scene",
    "SceneSpec",
    "balanced_probs",
    "draw_scene",
    "mention_classes",
    "natural_probs",
    "scenes",
    "write_scenes",
    "zipf_probs",
    "cooccurrence_matrix",
    "generate_scene",
    "partner_of",
    "scene_at",
    "scene_batch",
]


@dataclass(frozen=True)
class ClassSignature:
    """What makes a class: its shape, colour (None: random, never named), texture and size."""

    name: str
    shape: str
    colour: str | None
    texture: str = "solid"
    size: str = "medium"


CLASS_SIGNATURES: tuple[ClassSignature, ...] = (
    ClassSignature("red circle", "circle", "red"),
    ClassSignature("small yellow circle", "circle", "yellow", size="small"),
    ClassSignature("large green circle", "circle", "green", size="large"),
    ClassSignature("blue ring", "ring", "blue"),
    ClassSignature("purple ring", "ring", "purple"),
    ClassSignature("red star", "star", "red"),
    ClassSignature("yellow star", "star", "yellow"),
    ClassSignature("green triangle", "triangle", "green"),
    ClassSignature("purple triangle", "triangle", "purple"),
    ClassSignature("blue square", "square", "blue"),
    ClassSignature("striped square", "square", None, texture="striped"),
    ClassSignature("checkered square", "square", None, texture="checkered"),
    ClassSignature("white diamond", "diamond", "white"),
    ClassSignature("pink diamond", "diamond", "pink"),
    ClassSignature("cyan hexagon", "hexagon", "cyan"),
    ClassSignature("dotted hexagon", "hexagon", None, texture="dotted"),
    ClassSignature("black cross", "cross", "black"),
    ClassSignature("brown cross", "cross", "brown"),
    ClassSignature("white crescent", "crescent", "white"),
    ClassSignature("pink heart", "heart", "pink"),
)
SCENE_CLASSES: tuple[str, ...] = tuple(s.name for s in CLASS_SIGNATURES)
_INDEX = {name: i for i, name in enumerate(SCENE_CLASSES)}

# Zero-shot prompts in CLIP's style: every word occurs in alt-text captions (the text tower learned it), as
# "a photo of a {}." is made of words frequent on the web.
SCENE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "an image of a {}.",
    "a {}.",
    "an illustration with a {}.",
    "a {} on a plain background.",
)

# A perfect matching of the 20 classes: each class has exactly one partner it tends to appear with.
COOCCURRING_PAIRS: tuple[tuple[str, str], ...] = (
    ("red star", "white crescent"),
    ("yellow star", "blue ring"),
    ("red circle", "green triangle"),
    ("small yellow circle", "large green circle"),
    ("purple ring", "pink heart"),
    ("purple triangle", "cyan hexagon"),
    ("blue square", "striped square"),
    ("checkered square", "black cross"),
    ("white diamond", "dotted hexagon"),
    ("pink diamond", "brown cross"),
)
_PARTNER = np.empty(len(SCENE_CLASSES), dtype=np.int64)
for _a, _b in COOCCURRING_PAIRS:
    _PARTNER[_INDEX[_a]], _PARTNER[_INDEX[_b]] = _INDEX[_b], _INDEX[_a]

# Object colours (RGB) and how far each channel may wander per instance.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 32),
    "yellow": (242, 214, 30),
    "green": (36, 168, 56),
    "blue": (36, 72, 222),
    "purple": (132, 52, 196),
    "pink": (246, 128, 196),
    "cyan": (36, 206, 214),
    "white": (246, 246, 246),
    "black": (18, 18, 18),
    "brown": (128, 76, 34),
}
COLOUR_JITTER = 18
# Random colours of textured classes, from the palette (never named in captions).
_TEXTURE_COLOURS = ("red", "yellow", "green", "blue", "purple", "pink", "cyan", "brown")
# Object radius ranges in pixels at 64 x 64 (scaled with the image size).
RADII = {"small": (4.5, 6.0), "medium": (8.0, 10.5), "large": (13.0, 16.0)}
_BACKGROUND_WORDS = {"solid": ("plain",), "gradient": ("gradient", "shaded"), "noise": ("noisy", "textured")}


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn; the defaults are the world the tiny CLIP was trained on."""

    size: int = 64
    # Probabilities of 1, 2, 3, 4 objects.
    count_probs: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)
    # Chance that each further object is the co-occurrence partner of an object already present.
    cooccurrence: float = 0.5
    # Two objects' centres stay at least this fraction of their radii sum apart (1: no overlap).
    min_separation: float = 0.65
    # Chance of one or two thin clutter bars drawn over the objects.
    clutter: float = 0.35
    # Pixel noise: Gaussian with a standard deviation uniform in [0, noise_max] (0-255 scale).
    noise_max: float = 10.0
    background_probs: tuple[float, float, float] = (0.35, 0.35, 0.3)  # solid, gradient, noise

    def __post_init__(self) -> None:
        if not 32 <= self.size <= 256:
            raise ValueError(f"scene size must lie in [32, 256], got {self.size}")
        if not 1 <= len(self.count_probs) <= 4:
            raise ValueError("count_probs gives the chances of 1 .. 4 objects (at most four entries)")
        if min(self.count_probs) < 0 or sum(self.count_probs) <= 0:
            raise ValueError("count_probs must be non-negative with a positive sum")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its class, centre, radius (pixels) and rotation (degrees)."""

    cls: int
    x: float
    y: float
    radius: float
    angle: float


def partner_of(class_name: str) -> str:
    """The class that ``class_name`` tends to appear with."""
    return SCENE_CLASSES[int(_PARTNER[_INDEX[class_name]])]


def balanced_probs() -> np.ndarray:
    return np.full(len(SCENE_CLASSES), 1.0 / len(SCENE_CLASSES))


def zipf_probs(order_seed: int, exponent: float) -> np.ndarray:
    """Probabilities falling as 1 / rank ** exponent, the ranks in an order drawn from ``order_seed``."""
    order = np.random.default_rng(order_seed).permutation(len(SCENE_CLASSES))
    probs = np.empty(len(SCENE_CLASSES))
    probs[order] = 1.0 / (np.arange(len(SCENE_CLASSES)) + 1) ** exponent
    return probs / probs.sum()


# The world's natural distribution (world ``w``): Zipf class frequencies in an order drawn from ``w``, and
# mostly one or two objects per scene, as photo collections are. Synth-LT's pool and test set are drawn
# from it, as VOC-LT's training pool and VOC2007 test are drawn from the photos of one collection.
NATURAL_SPEC = SceneSpec(count_probs=(0.5, 0.3, 0.15, 0.05))
NATURAL_EXPONENT = 1.2


def natural_probs(world: int = 0) -> np.ndarray:
    return zipf_probs(world, NATURAL_EXPONENT)


def _check_probs(class_probs: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if class_probs is None:
        return balanced_probs()
    p = np.asarray(class_probs, dtype=np.float64)
    if p.shape != (len(SCENE_CLASSES),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"class_probs must be {len(SCENE_CLASSES)} non-negative numbers with a positive sum")
    return p / p.sum()


# ---------------------------------------------------------------------------------------------- layout


def _pick_classes(rng: np.random.Generator, spec: SceneSpec, probs: np.ndarray) -> list[int]:
    counts = np.asarray(spec.count_probs, dtype=np.float64)
    k = int(rng.choice(len(counts), p=counts / counts.sum())) + 1
    chosen: list[int] = []
    while len(chosen) < k:
        if chosen and rng.random() < spec.cooccurrence:
            partners = [int(_PARTNER[c]) for c in chosen if int(_PARTNER[c]) not in chosen]
            if partners:
                chosen.append(partners[int(rng.integers(len(partners)))])
                continue
        p = probs.copy()
        p[chosen] = 0.0
        if p.sum() <= 0:
            break
        chosen.append(int(rng.choice(len(p), p=p / p.sum())))
    return chosen


def _place(rng: np.random.Generator, spec: SceneSpec, classes: list[int]) -> list[SceneObject]:
    """Positions with bounded overlap: later objects may hide part, never most, of earlier ones."""
    scale = spec.size / 64.0
    objects: list[SceneObject] = []
    for c in classes:
        lo, hi = RADII[CLASS_SIGNATURES[c].size]
        r = float(rng.uniform(lo, hi)) * scale
        margin = 0.6 * r
        best, best_gap = None, -math.inf
        for _ in range(24):
            x, y = rng.uniform(margin, spec.size - margin, 2)
            gap = min(
                (math.hypot(x - o.x, y - o.y) / (r + o.radius) for o in objects),
                default=math.inf,
            )
            if gap > best_gap:
                best, best_gap = (float(x), float(y)), gap
            if gap >= spec.min_separation:
                break
        angle = float(rng.uniform(0, 360))
        objects.append(SceneObject(c, best[0], best[1], r, angle))
    return objects


# ---------------------------------------------------------------------------------------------- shapes


def _regular(n: int, r: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular n-gon (or an n-pointed star when ``inner`` is given), first vertex up."""
    if inner is None:
        t = np.deg2rad(angle) - np.pi / 2 + 2 * np.pi * np.arange(n) / n
        radii = np.full(n, r)
    else:
        t = np.deg2rad(angle) - np.pi / 2 + np.pi * np.arange(2 * n) / n
        radii = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
    return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    a = np.deg2rad(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rot.T


_T = np.linspace(0, 2 * np.pi, 40, endpoint=False)
# The classic parametric heart, scaled to unit radius and pointing down.
_HEART = np.stack([16 * np.sin(_T) ** 3, -(13 * np.cos(_T) - 5 * np.cos(2 * _T) - 2 * np.cos(3 * _T))], 1)
_HEART = (_HEART - _HEART.mean(0)) / 16.5
_CROSS = np.array(
    [(-1, -0.36), (-0.36, -0.36), (-0.36, -1), (0.36, -1), (0.36, -0.36), (1, -0.36)]
    + [(1, 0.36), (0.36, 0.36), (0.36, 1), (-0.36, 1), (-0.36, 0.36), (-1, 0.36)],
    dtype=np.float64,
)


def _draw_mask(shape: str, r: float, angle: float, box: int, ss: int = 2) -> Image.Image:
    """The object's mask on a box x box canvas centred on it, supersampled ``ss`` times for smooth edges."""
    big = box * ss
    mask = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(mask)
    c = big / 2
    R = r * ss

    def poly(points: np.ndarray) -> None:
        pen.polygon([(float(px + c), float(py + c)) for px, py in points], fill=255)

    if shape == "circle":
        pen.ellipse([c - R, c - R, c + R, c + R], fill=255)
    elif shape == "ring":
        pen.ellipse([c - R, c - R, c + R, c + R], fill=255)
        q = R * 0.58
        pen.ellipse([c - q, c - q, c + q, c + q], fill=0)
    elif shape == "crescent":
        pen.ellipse([c - R, c - R, c + R, c + R], fill=255)
        dx, dy = _rotate(np.array([[0.55 * R, -0.2 * R]]), angle)[0]
        q = R * 0.9
        pen.ellipse([c + dx - q, c + dy - q, c + dx + q, c + dy + q], fill=0)
    elif shape == "star":
        poly(_regular(5, R * 1.15, angle, inner=0.45))
    elif shape == "triangle":
        poly(_regular(3, R * 1.15, angle))
    elif shape == "hexagon":
        poly(_regular(6, R, angle))
    elif shape == "square":  # nearly axis-aligned, so a square never turns into a diamond
        poly(_regular(4, R * 1.15, 45 + (angle % 30) - 15))
    elif shape == "diamond":  # a tall rhombus, nearly upright
        poly(_rotate(np.array([(0, -1.2), (0.68, 0), (0, 1.2), (-0.68, 0)]) * R, (angle % 40) - 20))
    elif shape == "cross":
        poly(_rotate(_CROSS * R, angle % 90))
    elif shape == "heart":
        poly(_rotate(_HEART * R * 1.1, (angle % 50) - 25))
    else:  # pragma: no cover - the class table only holds the shapes above
        raise ValueError(f"unknown shape {shape}")
    return mask.reduce(ss) if ss > 1 else mask


def _jitter(rng: np.random.Generator, colour: str) -> np.ndarray:
    base = np.asarray(COLOURS[colour], dtype=np.int64)
    return np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)


def _fill(rng: np.random.Generator, sig: ClassSignature, box: int) -> tuple[int, ...] | Image.Image:
    """A solid colour, or a textured patch (box x box) in a random palette colour."""
    if sig.texture == "solid":
        return tuple(int(v) for v in _jitter(rng, sig.colour))
    colour = _jitter(rng, sig.colour or _TEXTURE_COLOURS[int(rng.integers(len(_TEXTURE_COLOURS)))])
    other = np.array([240, 240, 240]) if rng.random() < 0.5 else np.array([30, 30, 30])
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float64)
    period = float(rng.uniform(3.5, 5.0)) * max(box / 22.0, 1.0) ** 0.5
    if sig.texture == "striped":
        a = np.deg2rad(rng.uniform(0, 180))
        on = ((xx * math.cos(a) + yy * math.sin(a)) / period) % 1.0 < 0.5
    elif sig.texture == "checkered":
        on = ((xx // (period * 0.8)) + (yy // (period * 0.8))) % 2 == 0
    else:  # dotted: round dots on the colour
        u = (xx % period) - period / 2
        v = (yy % period) - period / 2
        on = u * u + v * v > (period * 0.3) ** 2
    patch = np.where(on[..., None], colour, other).astype(np.uint8)
    return Image.fromarray(patch, "RGB")


# ------------------------------------------------------------------------------------------ background


def _muted(rng: np.random.Generator, lo: int = 75, hi: int = 185, tint: int = 32) -> np.ndarray:
    """A low-saturation colour, so that backgrounds never pass for an object's colour."""
    return np.clip(rng.uniform(lo, hi) + rng.uniform(-tint, tint, 3), 0, 255)


def _background(rng: np.random.Generator, spec: SceneSpec) -> tuple[Image.Image, str]:
    size = spec.size
    kind = ("solid", "gradient", "noise")[int(rng.choice(3, p=np.asarray(spec.background_probs)))]
    if kind == "solid":
        colour = tuple(int(v) for v in _muted(rng))
        return Image.new("RGB", (size, size), colour), kind
    if kind == "gradient":
        c1, c2 = _muted(rng), _muted(rng)
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.arange(size, dtype=np.float64) / (size - 1) - 0.5
        t = ramp[None, :] * math.cos(a) + ramp[:, None] * math.sin(a)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        arr = c1 * (1 - t[..., None]) + c2 * t[..., None]
        return Image.fromarray(arr.astype(np.uint8), "RGB"), kind
    cells = int(rng.integers(3, 9))
    base = _muted(rng)
    grid = np.clip(base + rng.uniform(-40, 40, (cells, cells, 3)), 0, 255).astype(np.uint8)
    small = Image.fromarray(grid, "RGB")
    return small.resize((size, size), Image.Resampling.BILINEAR), kind


# ---------------------------------------------------------------------------------------------- captions

# Web alt-text names what stands out: the most salient object (the most visible pixels) almost always,
# others with a chance that falls with their visible area relative to it. Alt-text is short and names one
# or two things, so even a second object as large as the first is named only half the time (0.85 before
# the one calibration adjustment the model card describes).
NAME_TOP = 0.95
NAME_OTHERS = 0.5
# How a named object is worded: its class name, synonyms, some attributes left out, or a coarse word.
WORDING_PROBS = {"exact": 0.45, "synonym": 0.2, "partial": 0.25, "coarse": 0.1}
_SYNONYMS = {
    "red": ("crimson", "scarlet"),
    "yellow": ("golden", "lemon"),
    "green": ("emerald", "lime"),
    "blue": ("navy", "azure"),
    "purple": ("violet", "lilac"),
    "pink": ("rose", "magenta"),
    "cyan": ("turquoise", "teal"),
    "white": ("ivory", "snowy"),
    "black": ("dark", "jet"),
    "brown": ("chocolate", "tan"),
    "small": ("tiny", "little"),
    "large": ("big", "huge"),
    "striped": ("stripy", "banded"),
    "checkered": ("chequered", "chessboard"),
    "dotted": ("spotted", "speckled"),
    "circle": ("disc", "disk"),
    "ring": ("hoop", "donut"),
    "star": ("starburst", "pentagram"),
    "triangle": ("wedge", "trigon"),
    "square": ("box", "tile"),
    "diamond": ("rhombus", "lozenge"),
    "hexagon": ("honeycomb", "hex"),
    "cross": ("plus", "crosslet"),
    "crescent": ("moon", "sickle"),
    "heart": ("valentine", "love"),
}
_COARSE = ("shape", "object", "figure", "thing")


def _attributes(sig: ClassSignature) -> list[tuple[str, str]]:
    """(kind, word) pairs of a class, in the order its name uses them; the last is always its shape."""
    out = []
    if sig.size != "medium":
        out.append(("size", sig.size))
    if sig.texture != "solid":
        out.append(("texture", sig.texture))
    if sig.colour is not None:
        out.append(("colour", sig.colour))
    return [*out, ("shape", sig.shape)]


def mention_classes(attributes: Sequence[tuple[str, str]]) -> frozenset[int]:
    """The classes a mention can refer to: those whose signature has every named attribute."""
    return frozenset(
        i
        for i, sig in enumerate(CLASS_SIGNATURES)
        if all(dict(_attributes(sig)).get(kind) == word for kind, word in attributes)
    )


def _mention(rng: np.random.Generator, sig: ClassSignature) -> tuple[str, frozenset[int]]:
    """One named object: its words and the set of classes those words are true of."""
    attrs = _attributes(sig)
    kinds = list(WORDING_PROBS)
    wording = kinds[int(rng.choice(len(kinds), p=np.array(list(WORDING_PROBS.values()))))]
    if wording == "exact":
        return " ".join(w for _, w in attrs), frozenset({_INDEX[sig.name]})
    if wording == "synonym":
        swap = rng.random(len(attrs)) < 0.5
        swap[int(rng.integers(len(attrs)))] = True
        words = [_SYNONYMS[w][int(rng.integers(2))] if s else w for (_, w), s in zip(attrs, swap)]
        return " ".join(words), frozenset({_INDEX[sig.name]})
    if wording == "partial":  # keep the shape, drop at least one other attribute
        extra = attrs[:-1]
        keep = rng.random(len(extra)) < 0.5
        keep[int(rng.integers(len(extra)))] = False
        kept = [a for a, k in zip(extra, keep) if k] + [attrs[-1]]
        return " ".join(w for _, w in kept), mention_classes(kept)
    noun = _COARSE[int(rng.integers(len(_COARSE)))]
    if sig.colour is not None and rng.random() < 0.5:
        return f"{sig.colour} {noun}", mention_classes([("colour", sig.colour)])
    return noun, frozenset(range(len(SCENE_CLASSES)))


def _article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def _listing(phrases: list[str]) -> str:
    items = [_article(p) for p in phrases]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _caption(
    rng: np.random.Generator, objects: list[SceneObject], visible: np.ndarray, background: str
) -> tuple[str, list[frozenset[int]], tuple[int, ...]]:
    """Alt-text: a sentence naming some objects, salient first; what each naming is true of; the classes
    named (in any wording)."""
    order = np.argsort(-visible, kind="stable")
    top = max(float(visible[order[0]]), 1.0)
    named, named_classes = [], []
    for rank, k in enumerate(order):
        p = NAME_TOP if rank == 0 else NAME_OTHERS * float(visible[k]) / top
        if rng.random() < p:
            named.append(_mention(rng, CLASS_SIGNATURES[objects[k].cls]))
            named_classes.append(objects[k].cls)
    bg = _BACKGROUND_WORDS[background][int(rng.integers(len(_BACKGROUND_WORDS[background])))]
    if not named:
        forms = ["some shapes.", f"shapes on a {bg} background.", "abstract geometric art."]
        return forms[int(rng.integers(len(forms)))], [], ()
    listing = _listing([words for words, _ in named])
    forms = [
        f"{listing}.",
        f"a photo of {listing}.",
        f"{listing} on a {bg} background.",
        f"image of {listing}.",
        f"{listing}, clip art.",
        f"an illustration with {listing}.",
    ]
    return forms[int(rng.integers(len(forms)))], [classes for _, classes in named], tuple(named_classes)


# ---------------------------------------------------------------------------------------------- scenes


def _render(
    rng: np.random.Generator, spec: SceneSpec, objects: list[SceneObject], image: Image.Image
) -> tuple[Image.Image, np.ndarray]:
    """The scene drawn in order (later objects cover earlier ones), and each object's visible pixels."""
    owner = np.full((spec.size, spec.size), -1, dtype=np.int64)
    for k, o in enumerate(objects):
        sig = CLASS_SIGNATURES[o.cls]
        box = int(math.ceil(2.6 * o.radius)) + 2
        mask = _draw_mask(sig.shape, o.radius, o.angle, box)
        fill = _fill(rng, sig, box)
        corner = (int(round(o.x - box / 2)), int(round(o.y - box / 2)))
        if isinstance(fill, Image.Image):
            image.paste(fill, corner, mask)
        else:
            image.paste(fill, (*corner, corner[0] + box, corner[1] + box), mask)
        _cover(owner, np.asarray(mask) > 127, corner, k)
    if rng.random() < spec.clutter:
        pen = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 3))):
            x0, y0, x1, y1 = rng.uniform(0, spec.size, 4)
            width = max(1, int(round(rng.uniform(1, 3) * spec.size / 64)))
            pen.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in _muted(rng)), width=width)
    sigma = float(rng.uniform(0, spec.noise_max))
    if sigma > 0.5:
        arr = np.asarray(image, dtype=np.float32)
        arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * sigma
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    visible = np.bincount(owner[owner >= 0], minlength=len(objects)).astype(np.float64)
    return image, visible


def _cover(owner: np.ndarray, mask: np.ndarray, corner: tuple[int, int], k: int) -> None:
    """Mark the pixels of ``mask`` (placed at ``corner``, clipped to the image) as object ``k``'s."""
    x0, y0 = corner
    h, w = mask.shape
    ys, xs = slice(max(y0, 0), min(y0 + h, owner.shape[0])), slice(max(x0, 0), min(x0 + w, owner.shape[1]))
    sub = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    owner[ys, xs][sub] = k


@dataclass(frozen=True)
class Scene:
    """A drawn scene, with what its caption names: one set of classes per naming, each true of the
    scene when it holds one of them."""

    image: Image.Image
    labels: np.ndarray
    caption: str
    objects: list[SceneObject]
    visible: np.ndarray  # visible pixels of each object
    mentions: list[frozenset[int]]
    named: tuple[int, ...]  # the classes the caption names, in any wording


def draw_scene(
    rng: np.random.Generator,
    spec: SceneSpec | None = None,
    class_probs: Sequence[float] | np.ndarray | None = None,
) -> Scene:
    spec = spec or SceneSpec()
    probs = _check_probs(class_probs)
    classes = _pick_classes(rng, spec, probs)
    objects = _place(rng, spec, classes)
    image, background = _background(rng, spec)
    image, visible = _render(rng, spec, objects, image)
    caption, mentions, named = _caption(rng, objects, visible, background)
    labels = np.zeros(len(SCENE_CLASSES), dtype=np.uint8)
    labels[classes] = 1
    return Scene(image, labels, caption, objects, visible, mentions, named)


def generate_scene(
    rng: np.random.Generator,
    spec: SceneSpec | None = None,
    class_probs: Sequence[float] | np.ndarray | None = None,
    *,
    return_objects: bool = False,
):
    """One scene: (PIL image, label vector (C,) uint8, caption); plus its objects when ``return_objects``."""
    scene = draw_scene(rng, spec, class_probs)
    if return_objects:
        return scene.image, scene.labels, scene.caption, scene.objects
    return scene.image, scene.labels, scene.caption


def scene_at(
    seed: int,
    index: int,
    spec: SceneSpec | None = None,
    class_probs: Sequence[float] | np.ndarray | None = None,
) -> tuple[Image.Image, np.ndarray, str]:
    """Scene ``index`` of the stream ``seed`` (independent of every other scene)."""
    return generate_scene(np.random.default_rng([int(seed), int(index)]), spec, class_probs)


def scenes(
    n: int,
    seed: int,
    *,
    class_probs: Sequence[float] | np.ndarray | None = None,
    spec: SceneSpec | None = None,
    start: int = 0,
) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of stream ``seed``, with everything known about each."""
    spec = spec or SceneSpec()
    probs = _check_probs(class_probs)
    return [draw_scene(np.random.default_rng([int(seed), start + i]), spec, probs) for i in range(n)]


def scene_batch(
    n: int,
    seed: int,
    *,
    class_probs: Sequence[float] | np.ndarray | None = None,
    spec: SceneSpec | None = None,
    start: int = 0,
) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """Scenes ``start .. start + n - 1`` of stream ``seed``: (images, labels (n, C) uint8, captions)."""
    drawn = scenes(n, seed, class_probs=class_probs, spec=spec, start=start)
    labels = np.zeros((n, len(SCENE_CLASSES)), dtype=np.uint8)
    for i, scene in enumerate(drawn):
        labels[i] = scene.labels
    return [s.image for s in drawn], labels, [s.caption for s in drawn]


def cooccurrence_matrix(labels: np.ndarray) -> np.ndarray:
    """P(column class present | row class present) over a label matrix (nan rows for absent classes)."""
    y = np.asarray(labels, dtype=np.float64)
    counts = y.T @ y
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / np.diag(counts)[:, None]


REFERENCE_SEED = 4343  # the scenes zero-shot calibration is set on: a stream no training or test set uses


def reference_scenes(n: int = 256) -> list[Image.Image]:
    """The world's reference scenes for zero-shot calibration, one definition for the app and the CLI."""
    return scene_batch(n, seed=REFERENCE_SEED)[0]


# ---------------------------------------------------------------------------------------------- writing


def write_scenes(out: str | Path, n: int, seed: int, *, balanced: bool = False, world: int = 0) -> Path:
    """Scenes 0 .. n - 1 of stream ``seed`` as a CSV dataset: ``out/images/*.png`` and ``out/labels.csv``
    (header ``path,labels``, ``;``-separated class names). World ``world``'s natural distribution unless
    ``balanced`` (every class equally often, the default scene spec). Returns the CSV's path."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    probs, spec = (balanced_probs(), SceneSpec()) if balanced else (natural_probs(world), NATURAL_SPEC)
    lines = ["path,labels"]
    for i in tqdm(range(n), desc="scenes", unit="scene", disable=n < 500):
        scene = draw_scene(np.random.default_rng([int(seed), i]), spec, probs)
        path = f"images/{i:05d}.png"
        scene.image.save(out / path)
        lines.append(f"{path},{';'.join(SCENE_CLASSES[c] for c in np.flatnonzero(scene.labels))}")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return out / "labels.csv"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capnet.world.scenes", description="Write scenes of the synthetic world as a dataset."
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for labels.csv and images/")
    parser.add_argument("--n", type=int, default=1000, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene stream")
    parser.add_argument("--world", type=int, default=0, help="whose natural distribution (Synth-LT world)")
    parser.add_argument("--balanced", action="store_true", help="every class equally often")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    path = write_scenes(args.out, args.n, args.seed, balanced=args.balanced, world=args.world)
    print(f"wrote {args.n} scenes: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
