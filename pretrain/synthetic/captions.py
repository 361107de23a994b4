"""Words for a :class:`~.scenes.Scene`: noisy web alt-text, a long synthetic caption, eval captions.

- :func:`web_caption`: short alt-text: usually names one or two objects, sometimes only the
  background or a file-name-like string, and with probability ``p_wrong`` a wrong colour.
- :func:`synthetic_caption`: several sentences (overview, one per object, relations, fillers) in
  varied order and phrasing; complete and correct, roughly 60-150 word pieces.
- :func:`reference_captions`: five short complete descriptions (COCO-style) for retrieval eval.
"""

from __future__ import annotations

import numpy as np

from .scenes import COLOURS, Scene, SceneObject

_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _plural(n: int, word: str) -> str:
    return f"{_NUMBERS.get(n, n)} {word}{'' if n == 1 else 's'}"


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article (``an orange ...``)."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _listing(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ----------------------------------------------------------------------- web (alt-text) captions
def _web_one_object(scene: Scene, objs: list[SceneObject], rng) -> str:
    o = objs[0]
    return _pick(rng, ["{c} {s}", _a("{c} {s}"), "{c} {s} picture", "simple {c} {s} clipart", "{s} {c}"]).format(
        c=o.colour, s=o.shape)


def _web_two_objects(scene: Scene, objs: list[SceneObject], rng) -> str:
    names = " and ".join(o.name for o in objs[:2])
    return _pick(rng, ["{n}", "{n} on {b}", "shapes: {n}"]).format(n=names, b=scene.background)


def _web_background(scene: Scene, objs: list[SceneObject], rng) -> str:
    return _pick(rng, ["{b} background with shapes", "geometric shapes on {b}", "abstract {b} wallpaper"]).format(
        b=scene.background)


def _web_file_name(scene: Scene, objs: list[SceneObject], rng) -> str:
    return f"img_{int(rng.integers(1000, 9999))} {objs[0].shape}"


# (writer, probability): mostly partial but informative, sometimes nearly useless.
_WEB_WRITERS = ((_web_one_object, 0.55), (_web_two_objects, 0.25), (_web_background, 0.1), (_web_file_name, 0.1))


def web_caption(scene: Scene, rng: np.random.Generator, p_wrong: float = 0.15) -> str:
    """Alt-text style caption of ``scene``: partial, sometimes uninformative, sometimes wrong."""
    objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    if rng.random() < p_wrong:  # alt-text that names the wrong colour
        wrong = _pick(rng, [c for c in COLOURS if c != objs[0].colour])
        objs[0] = SceneObject(objs[0].shape, wrong, objs[0].size, objs[0].cell, objs[0].x, objs[0].y)
    writers, probs = zip(*_WEB_WRITERS)
    return writers[int(rng.choice(len(writers), p=probs))](scene, objs, rng)


# ----------------------------------------------------------------------- synthetic captions
def _overview(scene: Scene, rng) -> str:
    n = len(scene.objects)
    return _pick(rng, [
        "The image shows {k} on a plain {b} background.",
        "This is a simple digital illustration with {k} placed on a {b} background.",
        "In this picture, there are {k} arranged on a flat {b} surface.",
    ]).format(k=_plural(n, "geometric shape"), b=scene.background)


def _object_sentence(o: SceneObject, rng) -> str:
    return _pick(rng, [
        "A {z} {c} {s} is located in the {p} part of the image.",
        "In the {p} area, there is a {z} {c} {s}.",
        "The {c} {s} is {z} and sits near the {p} of the frame.",
        "Toward the {p}, one can see a {z} {s} painted in a solid {c} color.",
    ]).format(z=o.size, c=o.colour, s=o.shape, p=o.position)


def _relation_sentence(a: SceneObject, b: SceneObject, rng) -> str | None:
    if a.cell[1] != b.cell[1]:
        left, right = (a, b) if a.cell[1] < b.cell[1] else (b, a)
        return f"The {left.name} is to the left of the {right.name}."
    if a.cell[0] != b.cell[0]:
        top, bottom = (a, b) if a.cell[0] < b.cell[0] else (b, a)
        return f"The {top.name} appears above the {bottom.name}."
    return None


def _inventory(scene: Scene, objs: list[SceneObject], rng) -> str:
    return _pick(rng, ["Altogether, the picture contains {l}.", "In total, the scene holds {l}."]).format(
        l=_listing([_a(o.name) for o in objs]))


def _background(scene: Scene, objs: list[SceneObject], rng) -> str:
    return _pick(rng, ["The {b} background is flat and evenly lit, without any texture.",
                       "Behind the shapes, the {b} backdrop fills the rest of the frame."]).format(b=scene.background)


def _palette(scene: Scene, objs: list[SceneObject], rng) -> str:
    return f"The only colors besides the {scene.background} background are {_listing(sorted({o.colour for o in objs}))}."


def _generic(scene: Scene, objs: list[SceneObject], rng) -> str:
    return _pick(rng, ["There is no text, no people and no other objects visible in the scene.",
                       "The shapes have clean sharp edges and flat uniform colors."])


# Scene-level sentences, all true of the scene; fewer objects -> more of them (caption length).
_SCENE_SENTENCES = (_inventory, _background, _palette, _generic)


def synthetic_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A long, complete and correct description of ``scene`` (several sentences, varied order)."""
    objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    body = [_object_sentence(o, rng) for o in objs]
    for i in range(len(objs) - 1):
        rel = _relation_sentence(objs[i], objs[i + 1], rng)
        if rel:
            body.append(rel)
    extra = rng.choice(len(_SCENE_SENTENCES), size=min(len(_SCENE_SENTENCES), 5 - len(objs)), replace=False)
    body += [_SCENE_SENTENCES[i](scene, objs, rng) for i in extra]
    return " ".join([_overview(scene, rng), *(body[i] for i in rng.permutation(len(body)))])


# ----------------------------------------------------------------------- eval captions
def _describe(o: SceneObject, rng) -> str:
    return _pick(rng, ["a {z} {c} {s} at the {p}", "a {c} {s} in the {p}", "a {z} {c} {s}"]).format(
        z=o.size, c=o.colour, s=o.shape, p=o.position)


def reference_captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` short complete descriptions (every object named), as human eval captions are."""
    out = []
    for _ in range(n):
        objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
        things = ", ".join(_describe(o, rng) for o in objs)
        out.append(_pick(rng, ["{t} on a {b} background", "{b} background with {t}", "{t}"]).format(
            t=things, b=scene.background))
    return out
