"""The captioned synthetic world: determinism, labels against captions, layout, co-occurrence, balance."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from capnet.world.scenes import (
    CLASS_SIGNATURES,
    COOCCURRING_PAIRS,
    NATURAL_SPEC,
    SCENE_CLASSES,
    SCENE_TEMPLATES,
    SceneSpec,
    cooccurrence_matrix,
    generate_scene,
    mention_classes,
    natural_probs,
    partner_of,
    scene_at,
    scene_batch,
    scenes,
    write_scenes,
)
from capnet.world.scenes import main as scenes_main

C = len(SCENE_CLASSES)


@pytest.fixture(scope="module")
def corpus():
    """1,500 class-balanced scenes of one seed, shared by the statistical tests (about 1.5 s)."""
    return scene_batch(1500, seed=11)


def named_classes(caption: str) -> set[str]:
    return {name for name in SCENE_CLASSES if re.search(rf"\b{name}\b", caption)}


def test_class_table_is_a_world_captions_can_name():
    assert len(SCENE_CLASSES) == 20 == len(set(SCENE_CLASSES))
    signatures = {(s.shape, s.colour, s.texture, s.size) for s in CLASS_SIGNATURES}
    assert len(signatures) == C  # every class is its own (shape, colour, texture, size)
    # No class name hides inside another, so naming in a caption is unambiguous.
    assert not [(a, b) for a in SCENE_CLASSES for b in SCENE_CLASSES if a != b and a in b]
    # "a {}" is always grammatical, and every template takes the name once.
    assert all(name[0] not in "aeiou" for name in SCENE_CLASSES)
    assert all(t.count("{}") == 1 for t in SCENE_TEMPLATES)
    paired = [c for pair in COOCCURRING_PAIRS for c in pair]
    assert sorted(paired) == sorted(SCENE_CLASSES)  # a perfect matching
    assert all(partner_of(partner_of(c)) == c != partner_of(c) for c in SCENE_CLASSES)


def test_deterministic_for_a_seed_and_independent_of_batch_length():
    a_images, a_labels, a_caps = scene_batch(6, seed=3)
    b_images, b_labels, b_caps = scene_batch(10, seed=3)
    assert a_caps == b_caps[:6]
    assert np.array_equal(a_labels, b_labels[:6])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a_images, b_images))
    # start= continues the same stream; scene_at gives one scene of it.
    _, c_labels, c_caps = scene_batch(4, seed=3, start=6)
    assert c_caps == b_caps[6:] and np.array_equal(c_labels, b_labels[6:])
    image, labels, caption = scene_at(3, 7)
    assert caption == b_caps[7] and np.array_equal(np.asarray(image), np.asarray(b_images[7]))
    # Another seed, another world.
    _, _, other = scene_batch(10, seed=4)
    assert other != b_caps


def test_generate_scene_is_deterministic_for_a_generator():
    one = generate_scene(np.random.default_rng(5))
    two = generate_scene(np.random.default_rng(5))
    assert one[2] == two[2] and np.array_equal(one[1], two[1])
    assert np.array_equal(np.asarray(one[0]), np.asarray(two[0]))


def test_images_labels_and_object_counts(corpus):
    images, labels, captions = corpus
    assert len(images) == len(captions) == labels.shape[0] == 1500
    assert labels.shape[1] == C and labels.dtype == np.uint8
    assert all(im.size == (64, 64) and im.mode == "RGB" for im in images[:50])
    counts = labels.sum(axis=1)
    assert counts.min() == 1 and counts.max() == 4
    assert set(np.unique(counts)) == {1, 2, 3, 4}
    assert 2.0 < counts.mean() < 2.6  # 0.3, 0.3, 0.25, 0.15 for 1 .. 4 objects: 2.25
    # Images are not flat: background, objects and noise give them spread.
    assert all(np.asarray(im).std() > 5 for im in images[:50])


def test_captions_are_true_of_their_scene_and_name_what_stands_out():
    drawn = scenes(1500, seed=11)
    exact = small_named = small_seen = top_named = 0
    for scene in drawn:
        present = set(np.flatnonzero(scene.labels))
        # Every naming is true of the scene (it can refer to a class the scene holds), and the classes
        # named exactly by their class name are present.
        assert all(m & present for m in scene.mentions), scene.caption
        assert named_classes(scene.caption) <= {SCENE_CLASSES[c] for c in present}, scene.caption
        assert set(scene.named) <= present and len(scene.named) == len(scene.mentions)
        exact += len(named_classes(scene.caption))
        top = scene.objects[int(np.argmax(scene.visible))].cls
        top_named += top in scene.named
        for o in scene.objects:
            if CLASS_SIGNATURES[o.cls].size == "small" and len(scene.objects) > 1:
                small_seen += 1
                small_named += o.cls in scene.named
        assert scene.caption.endswith(".") and scene.caption == scene.caption.strip()
    objects = sum(len(s.objects) for s in drawn)
    named = sum(len(s.named) for s in drawn)
    assert top_named > 0.9 * len(drawn)  # the most visible object: almost always
    assert named < 0.85 * objects  # a subset, as alt-text
    assert small_named < 0.5 * small_seen  # small objects beside others: seldom
    assert 0.25 * named < exact < 0.7 * named  # the class phrase is one wording among several
    captions = [s.caption for s in drawn]
    # Every word of the zero-shot templates occurs in captions: the text tower has seen it.
    caption_words = {w for c in captions for w in re.findall(r"[a-z]+", c)}
    template_words = {w for t in SCENE_TEMPLATES for w in re.findall(r"[a-z]+", t)}
    assert template_words <= caption_words, template_words - caption_words
    assert any("crimson" in c or "scarlet" in c for c in captions)  # synonyms
    assert any(" shape" in c or " object" in c for c in captions)  # coarse words


def test_a_mention_is_true_of_every_class_with_its_attributes():
    by_shape = {w: {i for i, n in enumerate(SCENE_CLASSES) if n.split()[-1] == w} for w in ("star", "square")}
    assert mention_classes([("shape", "star")]) == by_shape["star"] == {5, 6}
    assert mention_classes([("shape", "square")]) == by_shape["square"]
    reds = {i for i, n in enumerate(SCENE_CLASSES) if "red" in n.split()}
    assert mention_classes([("colour", "red")]) == reds
    assert mention_classes([("colour", "yellow"), ("shape", "circle")]) == {1}
    assert mention_classes([]) == set(range(C))


def test_visible_pixels_account_for_occlusion():
    for seed in range(40):
        scene = scenes(1, seed=seed)[0]
        assert scene.visible.sum() <= 64 * 64 and (scene.visible >= 0).all()
        last = scene.objects[-1]  # drawn on top of the others: only the border can cut it
        if (
            CLASS_SIGNATURES[last.cls].shape == "circle"
            and min(last.x, last.y, 64 - last.x, 64 - last.y) > last.radius + 1
        ):
            assert scene.visible[-1] == pytest.approx(np.pi * last.radius**2, rel=0.15)
        for k, o in enumerate(scene.objects[:-1]):  # earlier objects never show more than their full area
            assert scene.visible[k] <= 4 * (1.2 * o.radius) ** 2


def test_classes_are_balanced_under_uniform_probabilities(corpus):
    _, labels, _ = corpus
    freq = labels.sum(axis=0)
    assert freq.min() > 0.75 * freq.mean() and freq.max() < 1.25 * freq.mean()


def test_cooccurrence_structure_is_measurable(corpus):
    _, labels, _ = corpus
    cond = cooccurrence_matrix(labels)  # P(column | row)
    for c, name in enumerate(SCENE_CLASSES):
        p = SCENE_CLASSES.index(partner_of(name))
        others = np.delete(cond[c], [c, p])
        assert cond[c, p] > 3 * others.mean(), name
        assert cond[c, p] > others.max()
    # Without co-occurrence the partner is no more likely than any other class.
    _, flat, _ = scene_batch(1500, seed=11, spec=SceneSpec(cooccurrence=0.0))
    cond0 = cooccurrence_matrix(flat)
    partner_rates = [cond0[c, SCENE_CLASSES.index(partner_of(n))] for c, n in enumerate(SCENE_CLASSES)]
    assert np.mean(partner_rates) < 1.5 * np.nanmean(cond0[~np.eye(C, dtype=bool)])


def test_class_probs_skew_the_frequencies():
    probs = 0.8 ** np.arange(C)
    _, labels, _ = scene_batch(600, seed=2, class_probs=probs, spec=SceneSpec(cooccurrence=0.0))
    freq = labels.sum(axis=0)
    assert freq[:3].min() > 4 * freq[-3:].max()
    with pytest.raises(ValueError, match="class_probs"):
        scene_batch(2, seed=0, class_probs=[1.0, 2.0])
    with pytest.raises(ValueError, match="class_probs"):
        scene_batch(2, seed=0, class_probs=-np.ones(C))


def test_sizes_objects_and_larger_scenes():
    image, labels, caption, objects = generate_scene(
        np.random.default_rng(0), SceneSpec(size=96), return_objects=True
    )
    assert image.size == (96, 96)
    assert sorted(o.cls for o in objects) == list(np.flatnonzero(labels))
    radii = {c: [] for c in range(C)}
    for seed in range(300):
        *_, objs = generate_scene(np.random.default_rng(seed), return_objects=True)
        for o in objs:
            radii[o.cls].append(o.radius)
            assert 0 <= o.x <= 64 and 0 <= o.y <= 64
    small = SCENE_CLASSES.index("small yellow circle")
    large = SCENE_CLASSES.index("large green circle")
    medium = SCENE_CLASSES.index("red circle")
    assert max(radii[small]) < min(radii[medium]) and max(radii[medium]) < min(radii[large])
    with pytest.raises(ValueError, match="size"):
        SceneSpec(size=16)


def test_write_scenes_writes_a_csv_dataset_of_the_stream(tmp_path):
    csv = write_scenes(tmp_path / "fresh", 12, seed=91)
    lines = csv.read_text().splitlines()
    assert lines[0] == "path,labels" and len(lines) == 13
    for i, line in enumerate(lines[1:]):
        path, names = line.split(",")
        image, labels, _ = scene_at(91, i, NATURAL_SPEC, natural_probs(0))  # the natural distribution
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "fresh" / path)), np.asarray(image)
        )  # PNG: lossless
        assert names.split(";") == [SCENE_CLASSES[c] for c in np.flatnonzero(labels)]


def test_scenes_command_natural_by_default_balanced_on_request(tmp_path, capsys):
    from capnet.data import read_csv

    assert scenes_main(["--out", str(tmp_path / "nat"), "--n", "300", "--seed", "5"]) == 0
    assert scenes_main(["--out", str(tmp_path / "bal"), "--n", "300", "--seed", "5", "--balanced"]) == 0
    assert "wrote 300 scenes" in capsys.readouterr().out
    nat = read_csv(tmp_path / "nat" / "labels.csv", tmp_path / "nat", list(SCENE_CLASSES)).class_freq
    bal = read_csv(tmp_path / "bal" / "labels.csv", tmp_path / "bal", list(SCENE_CLASSES)).class_freq
    assert bal.min() > 0.4 * bal.mean() and bal.max() < 1.8 * bal.mean()
    assert nat.max() > 8 * max(nat.min(), 1)  # Zipf: the head class far above the tail
    assert np.argmax(nat) == np.argmax(natural_probs(0))
    with pytest.raises(SystemExit) as bad:
        scenes_main(["--out", str(tmp_path / "none"), "--n", "0"])
    assert bad.value.code == 2 and "--n must be at least 1" in capsys.readouterr().err


def test_capnet_world_scenes_writes_a_dataset_the_loader_reads(tmp_path, capsys):
    from capnet import cli
    from capnet.data import read_csv

    assert cli.main(["world", "scenes", "--out", str(tmp_path / "s"), "--n", "12", "--seed", "90210"]) == 0
    assert "wrote 12 scenes" in capsys.readouterr().out
    records = read_csv(tmp_path / "s" / "labels.csv", tmp_path / "s", list(SCENE_CLASSES))
    assert len(records) == 12 and all(p.is_file() for p in records.paths)
    images, labels, _ = scene_batch(12, 90210, class_probs=natural_probs(0), spec=NATURAL_SPEC)
    assert (records.labels == labels).all()  # the same scenes as the library draws
    assert cli.main(["world", "scenes", "--out", str(tmp_path / "t"), "--n", "0"]) == 2
