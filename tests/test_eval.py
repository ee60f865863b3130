"""Tests for eval.py: the judge is validated on ground-truth renders, noise, blank images and wrong prompts;
the prompt set is deterministic; the GenEval/DPG writers produce layouts the rules accept; statistics are right."""
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

import eval as E
import sample
from data import SHAPES, render


@pytest.fixture(scope="session")
def judge_cache(tmp_path_factory):
    # A temporary cache for the whole session, also as the default: nothing is written to $HOME.
    path, before = str(tmp_path_factory.mktemp("judge-cache")), os.environ.get("IMAGENET_T2I_CACHE")
    os.environ["IMAGENET_T2I_CACHE"] = path
    yield path
    if before is None:
        os.environ.pop("IMAGENET_T2I_CACHE")
    else:
        os.environ["IMAGENET_T2I_CACHE"] = before


@pytest.fixture(scope="session")
def judge(judge_cache):
    return E.load_judge(judge_cache, log=lambda message: None)     # trained once: ~10 s of CPU


@pytest.fixture(scope="module")
def prompts():
    return E.make_prompts(per_category=8, seed=0)


def accuracy_by_category(correct: np.ndarray, prompts) -> dict:
    tags = np.array([p.metadata["tag"] for p in prompts])
    return {t: float(correct[tags == t].mean()) for t in E.TAGS}


#################################################################################
#                                     Judge                                     #
#################################################################################

def test_judge_accepts_ground_truth_renders(judge, prompts):
    images = np.stack([render(p.scene) for p in prompts])
    correct, reasons = judge.score(images, [p.metadata for p in prompts])
    accuracy = accuracy_by_category(correct, prompts)
    assert min(accuracy.values()) >= 0.95, (accuracy, [r for r in reasons if r])


def test_judge_rejects_noise_and_blank_images(judge, prompts):
    rng = np.random.default_rng(0)
    shape = (len(prompts), 32, 32, 3)
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    blank = np.broadcast_to(rng.integers(90, 171, (len(prompts), 1, 1, 1)), shape).astype(np.uint8)
    for images in (noise, blank):
        correct, _ = judge.score(images, [p.metadata for p in prompts])
        assert np.mean(list(accuracy_by_category(correct, prompts).values())) <= 0.05


def wrong(metadata: dict, scene) -> dict:
    """The same prompt made false for its ground-truth scene: the judge must notice each kind of error."""
    m = json.loads(json.dumps(metadata))
    first = m["include"][0]
    other = next(s for s in E.SHAPES if s not in {o.shape for o in scene.objects})
    if m["tag"] in ("single_object", "two_object"):
        m["include"][-1]["class"] = other
    elif m["tag"] == "counting":
        first["count"] += 1
        m["exclude"][0]["count"] += 1
    elif m["tag"] == "colors":
        first["color"] = next(c for c in E.COLOR_NAMES if c != first["color"])
    elif m["tag"] == "position":
        relation = m["include"][1]["position"][0]
        opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        m["include"][1]["position"][0] = opposite[relation]
    else:  # attribute binding: swap the two colors
        first["color"], m["include"][1]["color"] = m["include"][1]["color"], first["color"]
    return m


def test_judge_rejects_renders_of_false_prompts(judge, prompts):
    images = np.stack([render(p.scene) for p in prompts])
    correct, _ = judge.score(images, [wrong(p.metadata, p.scene) for p in prompts])
    assert max(accuracy_by_category(correct, prompts).values()) <= 0.05


def test_geneval_rules_on_hand_made_detections():
    def det(shape, color, x, y):
        return E.Detection(shape, color, 0.9, (x - 0.1, y - 0.1, x + 0.1, y + 0.1))

    three_stars = [det("star", "red", 0.2, 0.5), det("star", "blue", 0.5, 0.5), det("star", "red", 0.8, 0.5)]
    counting = {"tag": "counting", "include": [{"class": "star", "count": 3}],
                "exclude": [{"class": "star", "count": 4}], "prompt": "a photo of three stars"}
    assert E.check_metadata(three_stars, counting)[0]
    assert not E.check_metadata(three_stars[:2], counting)[0]
    assert not E.check_metadata(three_stars + [det("star", "red", 0.5, 0.2)], counting)[0]   # exactly three
    red = {"tag": "colors", "include": [{"class": "star", "count": 2, "color": "red"}], "prompt": ""}
    assert E.check_metadata(three_stars, red)[0]
    assert not E.check_metadata(three_stars[:2], red)[0]
    position = {"tag": "position", "prompt": "a photo of a star to the left of a circle",
                "include": [{"class": "circle", "count": 1}, {"class": "star", "count": 1, "position": ["left of", 0]}]}
    assert E.check_metadata([det("circle", "red", 0.7, 0.5), det("star", "red", 0.3, 0.55)], position)[0]
    assert not E.check_metadata([det("circle", "red", 0.3, 0.5), det("star", "red", 0.7, 0.5)], position)[0]
    assert not E.check_metadata([det("circle", "red", 0.5, 0.5), det("star", "red", 0.52, 0.5)], position)[0]  # too close
    assert E.relative_position((0, 0, 0.2, 0.2), (0.5, 0.5, 0.7, 0.7)) == {"left of", "above"}


def test_shape_agnostic_rules_count_blobs_once():
    def blob(color, x):
        return E.Detection("junk", color, 0.9, (x - 0.1, 0.4, x + 0.1, 0.6))

    color_attr = {"tag": "color_attr", "prompt": "a photo of a red star and a blue circle",
                  "include": [{"class": "star", "count": 1, "color": "red"}, {"class": "circle", "count": 1, "color": "blue"}]}
    two = [blob("red", 0.3), blob("blue", 0.7)]
    assert not E.check_metadata(two, color_attr)[0]                           # GenEval rules need the shapes
    assert E.check_metadata(two, color_attr, ignore_shape=True)[0]
    assert not E.check_metadata(two[:1] * 2, color_attr, ignore_shape=True)[0]
    two_object = {"tag": "two_object", "prompt": "", "include": [{"class": "star", "count": 1},
                                                                 {"class": "circle", "count": 1}]}
    assert not E.check_metadata(two[:1], two_object, ignore_shape=True)[0]     # one blob cannot be both objects
    assert E.check_metadata(two, two_object, ignore_shape=True)[0]
    color_position = {"tag": "color_position", "prompt": "a photo of a red star to the left of a blue circle",
                      "include": [{"class": "circle", "count": 1, "color": "blue"},
                                  {"class": "star", "count": 1, "color": "red", "position": ["left of", 0]}]}
    assert E.check_metadata(two, color_position, ignore_shape=True)[0]        # red blob left of the blue one
    swapped = [blob("red", 0.7), blob("blue", 0.3)]
    assert not E.check_metadata(swapped, color_position, ignore_shape=True)[0]
    assert not E.check_metadata(two, color_position)[0]                       # GenEval rules need the shapes


def test_judge_is_cached(judge, judge_cache):
    messages = []
    again = E.load_judge(log=messages.append)              # the session's file (via the env var): loaded, not retrained
    assert messages == [] and os.listdir(judge_cache) == [os.path.basename(E.judge_path())]
    for a, b in zip(judge.model.state_dict().values(), again.model.state_dict().values()):
        assert (a == b).all()

#################################################################################
#                                  Prompt Set                                   #
#################################################################################

def test_prompt_set_is_deterministic_and_well_formed(prompts):
    same, other = E.make_prompts(per_category=8, seed=0), E.make_prompts(per_category=8, seed=1)
    assert [p.metadata for p in same] == [p.metadata for p in prompts]
    assert [p.scene for p in same] == [p.scene for p in prompts]
    assert [p.metadata for p in other] != [p.metadata for p in prompts]
    tags = [p.metadata["tag"] for p in prompts]
    assert all(tags.count(t) == 8 for t in E.TAGS) and len(tags) == 8 * len(E.TAGS)
    for p in prompts:
        m = p.metadata
        assert m["prompt"].startswith("a photo of ") and all(r["class"] in E.SHAPES for r in m["include"])
        assert len(p.scene.objects) == sum(r["count"] for r in m["include"])
    texts = {p.metadata["tag"]: p.metadata["prompt"] for p in prompts}
    assert "to the" in texts["position"] or " above " in texts["position"] or " below " in texts["position"]
    first, second = texts["color_position"].split()[4], texts["color_position"].split()[-2]   # "a photo of a red star ..."
    assert first in E.COLOR_NAMES and second in E.COLOR_NAMES and first != second
    assert texts["counting"].split()[3] in ("two", "three", "four")

#################################################################################
#                                    Layouts                                    #
#################################################################################

def test_geneval_layout_is_accepted_and_broken_ones_are_not(tmp_path, prompts):
    metadatas = [p.metadata for p in prompts[:3]]
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    out = tmp_path / "geneval"
    E.write_geneval_layout(str(out), metadatas, images)
    E.write_geneval_layout(str(out), metadatas, images)          # overwriting is atomic and allowed
    assert E.check_geneval_layout(str(out)) == 3
    assert json.loads((out / "00001" / "metadata.jsonl").read_text()) == metadatas[1]
    assert (np.asarray(Image.open(out / "00002" / "samples" / "0003.png")) == images[2, 3]).all()
    assert Image.open(out / "00000" / "grid.png").size == (64, 64)
    (out / "00001" / "metadata.jsonl").write_text(json.dumps(metadatas[1]) + "\n" + json.dumps(metadatas[1]) + "\n")
    with pytest.raises(ValueError, match="00001/metadata.jsonl"):
        E.check_geneval_layout(str(out))
    E.write_geneval_layout(str(out), metadatas, images)
    os.rename(out / "00002" / "samples" / "0001.png", out / "00002" / "samples" / "one.png")
    with pytest.raises(ValueError, match="00002/samples"):
        E.check_geneval_layout(str(out))
    E.write_geneval_layout(str(out), metadatas, images)
    os.rename(out / "00002", out / "00003")
    with pytest.raises(ValueError, match="without gaps"):
        E.check_geneval_layout(str(out))
    os.rename(out / "00003", out / "0002")
    with pytest.raises(ValueError, match="5 digits"):
        E.check_geneval_layout(str(out))


def test_dpg_layout_is_one_2x2_grid_per_prompt(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    E.write_dpg_layout(str(tmp_path / "dpg"), ["a", "b"], images)
    assert sorted(os.listdir(tmp_path / "dpg")) == ["a.png", "b.png"]
    grid = np.asarray(Image.open(tmp_path / "dpg" / "b.png"))
    assert grid.shape == (32, 32, 3) and (grid[16:, :16] == images[1, 2]).all() and (grid[:16, 16:] == images[1, 1]).all()
    with pytest.raises(ValueError):
        E.write_dpg_layout(str(tmp_path / "bad"), ["a"], images[:1, :3])

#################################################################################
#                                  Statistics                                   #
#################################################################################

def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)
    small = {"a": rng.random((50, 4)) < 0.7, "b": rng.random((50, 4)) < 0.3}
    large = {"a": rng.random((200, 4)) < 0.7, "b": rng.random((200, 4)) < 0.3}
    s, l = E.bootstrap_accuracy(small), E.bootstrap_accuracy(large)
    for r in (*s.values(), *l.values()):
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert s["a"]["accuracy"] == pytest.approx(small["a"].mean())
    assert s["overall"]["accuracy"] == pytest.approx((small["a"].mean() + small["b"].mean()) / 2)
    for k in ("a", "b", "overall"):
        ratio = (l[k]["ci_high"] - l[k]["ci_low"]) / (s[k]["ci_high"] - s[k]["ci_low"])
        assert 0.3 < ratio < 0.7                                  # 4x the prompts: about half the width
    assert E.bootstrap_accuracy(small) == s                       # seeded


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2, d1, d2 = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + (d1 + d2 - 2 * np.sqrt(d1 * d2)).sum()
    assert E.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-9)
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))         # same eigenvectors: the closed form still holds
    s1, s2 = rotation @ np.diag(d1) @ rotation.T, rotation @ np.diag(d2) @ rotation.T
    assert E.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert E.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        E.frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])


def reference_frechet(mu1, s1, mu2, s2) -> float:
    """Without sqrtm: Tr((S1 S2)^1/2) is the sum of the square roots of S1 S2's eigenvalues (real, >= 0 for PSD
    S1, S2; rounding can leave -1e-17 or a tiny imaginary part, hence .real and the clip)."""
    eigenvalues = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eigenvalues).sum())


def wrong_frechet(mu1, s1, mu2, s2) -> float:
    """The classic mistake, Tr(S1^1/2 S2^1/2): equal to the right value only when S1 and S2 commute."""
    def root(s):
        w, v = np.linalg.eigh(s)
        return (v * np.sqrt(w.clip(min=0))) @ v.T
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root(s1) @ root(s2)))


def test_frechet_distance_with_non_commuting_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6)) * [3, 1, 1, 0.5, 0.3, 0.1]    # different eigenvectors
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    expected = reference_frechet(mu1, s1, mu2, s2)
    assert E.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert E.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6)           # symmetric
    assert abs(wrong_frechet(mu1, s1, mu2, s2) - expected) > 0.01 * expected   # the case tells the two formulas apart


def test_frechet_distance_with_fewer_samples_than_dimensions(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 16))                                               # 6 samples of 16 features: rank 5
    y = rng.normal(size=(5, 16)) @ rng.normal(size=(16, 16)) / 4 + 1
    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    assert np.linalg.matrix_rank(s1) == 5 and np.linalg.matrix_rank(s2) == 4
    expected = reference_frechet(mu1, s1, mu2, s2)
    assert abs(wrong_frechet(mu1, s1, mu2, s2) - expected) > 0.01 * expected
    assert E.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    # The fallback is for sqrtm returning non-finite values on a singular product. SciPy 1.17 returns a finite
    # root for these covariances, so the failure is simulated: the first call fails, the regularised one is real.
    sqrtm, calls = E.scipy.linalg.sqrtm, []

    def failing_once(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else sqrtm(m)

    monkeypatch.setattr(E.scipy.linalg, "sqrtm", failing_once)
    distance = E.frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
    offset = 1e-6 * np.eye(16)
    assert len(calls) == 2 and np.allclose(calls[1], (s1 + offset) @ (s2 + offset))       # the fallback ran
    # eps on the diagonal biases the root's trace by O(dimensions x sqrt(eps)): 0.004 here, 4 for the wrong formula
    assert np.isfinite(distance) and distance == pytest.approx(expected, abs=0.02)

#################################################################################
#                                  End to End                                   #
#################################################################################

def test_cli_samples_the_run_with_its_settings(judge, monkeypatch, tmp_path):
    scenes = {p.metadata["prompt"]: p.scene for p in E.make_prompts(per_category=2, seed=0)}
    seen = {}

    class Pipeline:                                      # what eval.py reads of a sample.Pipeline
        image_size, checkpoint = 32, tmp_path / "run" / "checkpoints" / "step_0000001"
        config = type("Config", (), {"guidance": 5.0, "sample_steps": 30})

    def fake_generate(pipe, prompts, **settings):       # stands in for sample.generate: records, then draws the truth
        seen.update(settings)
        return np.stack([render(scenes[t]) for t in prompts])

    monkeypatch.setattr(sample, "load_pipeline", lambda run, device=None, ema=True: Pipeline())
    monkeypatch.setattr(sample, "generate", fake_generate)
    out = tmp_path / "out"
    E.main(["shapes", "--ckpt", str(tmp_path), "--out", str(out), "--per-category", "2", "--images-per-prompt", "1",
            "--steps", "7", "--sampler", "heun", "--shift", "3", "--guidance-interval", "0.3", "1"])
    assert {k: seen[k] for k in ("guidance", "steps", "method", "shift", "guidance_interval")} == \
        dict(guidance=5.0, steps=7, method="heun", shift=3.0, guidance_interval=(0.3, 1.0))
    results = json.loads((out / "results.json").read_text())
    assert {k: results["settings"][k] for k in ("guidance", "steps", "sampler", "shift", "guidance_interval")} == \
        dict(guidance=5.0, steps=7, sampler="heun", shift=3.0, guidance_interval=[0.3, 1.0])
    assert results["accuracy"]["overall"]["accuracy"] >= 0.95


def test_evaluate_shapes_with_a_perfect_generator(judge, tmp_path):
    scenes = {}
    for p in E.make_prompts(per_category=3, seed=0):
        scenes.setdefault(p.metadata["prompt"], p.scene)

    def perfect(texts: list[str]) -> np.ndarray:     # draws each prompt's ground truth: a model in memory
        return np.stack([render(scenes[t]) for t in texts])

    out = tmp_path / "shapes"
    results = E.evaluate_shapes(perfect, per_category=3, images_per_prompt=2, out_dir=str(out), judge=judge, progress=False)
    assert results["accuracy"]["overall"]["accuracy"] >= 0.95 and set(results["accuracy"]) == {*E.CATEGORIES, "overall"}
    assert results["attribute_accuracy"]["color_position"]["accuracy"] >= 0.95
    assert all(all(p["correct_any_shape"]) for p in results["prompts"] if p["tag"] == "color_position")
    assert E.check_geneval_layout(str(out / "geneval")) == 18                  # GenEval's 6 categories x 3 prompts
    assert json.loads((out / "results.json").read_text())["accuracy"] == results["accuracy"]
    assert results["settings"]["guidance"] is None and results["settings"]["sampler"] is None  # the callable's own
    assert "| color_position |" in (out / "results.md").read_text()
    assert all((out / f"grid_{t}.png").exists() for t in E.TAGS)


def test_single_object_accuracy_by_shape(judge):
    scenes = {p.metadata["prompt"]: p.scene for p in E.make_prompts(per_category=8, seed=0)}

    def no_stars(texts: list[str]) -> np.ndarray:       # each prompt's ground truth, every star left out
        return np.stack([render(dataclasses.replace(scenes[t], objects=tuple(o for o in scenes[t].objects
                                                                               if o.shape != "star"))) for t in texts])

    results = E.evaluate_shapes(no_stars, per_category=8, images_per_prompt=1, judge=judge, progress=False)
    assert results["single_object_by_shape"] == {s: 0.0 if s == "star" else 1.0 for s in SHAPES}   # 8 prompts: 1 each
    assert "single_object by shape: circle 1.00" in E.report_tables(results) and "star 0.00" in E.report_tables(results)


def test_layout_against_the_reversed_relation(judge):
    prompts = E.make_prompts(per_category=8, seed=0)
    scenes = {p.metadata["prompt"]: p.scene for p in prompts}
    relation = {p.metadata["prompt"]: p.metadata["include"][1]["position"][0] for p in prompts
                if p.metadata["tag"] == "color_position"}

    def mirrored(text: str):        # the ground truth with its centres flipped along the prompted relation's axis
        axis = "x" if relation[text] in ("left of", "right of") else "y"
        return dataclasses.replace(scenes[text], objects=tuple(dataclasses.replace(o, **{axis: 1 - getattr(o, axis)})
                                                               for o in scenes[text].objects))

    def draw(flip):                 # a generator: ground truths, color_position ones mirrored where flip(prompt)
        return lambda texts: np.stack([render(mirrored(t) if t in relation and flip(t) else scenes[t]) for t in texts])

    def evaluate(flip) -> dict:
        return E.evaluate_shapes(draw(flip), per_category=8, images_per_prompt=1, judge=judge, progress=False)

    half = set(sorted(relation)[::2])   # a model that ignores the relation: the prompted layout for half the prompts
    results = evaluate(lambda t: False)
    right, wrong = results["layout_vs_reversed"], evaluate(lambda t: True)["layout_vs_reversed"]
    coin = evaluate(lambda t: t in half)["layout_vs_reversed"]
    assert (right["prompted"], right["reversed"], right["ci_low"], right["prompts"]) == (1.0, 0.0, 1.0, 8)
    assert (wrong["prompted"], wrong["reversed"], wrong["difference"]) == (0.0, 1.0, -1.0)
    assert coin["difference"] == 0.0 and coin["ci_low"] < 0 < coin["ci_high"]
    assert "reversed 0.000, difference +1.000" in E.report_tables(results)

    # A model that draws the first-named object left or top: right on "left of" and "above" only.
    by_order = evaluate(lambda t: relation[t] in ("right of", "below"))
    assert by_order["color_position_by_relation"] == {"left of": 1.0, "right of": 0.0, "above": 1.0, "below": 0.0}
    assert "color_position by relation: left of 1.00, right of 0.00, above 1.00, below 0.00" in \
        E.report_tables(by_order)


def test_validation_overall_is_the_benchmarks():
    class OnlyColorPosition:        # right on our own tag alone: GenEval's 6 categories average to 0, all 7 to 1/7
        def score(self, images, metadatas, ignore_shape=False):
            return np.array([m["tag"] == "color_position" for m in metadatas]), [""] * len(metadatas)

        def detect(self, images, keep_junk=False):
            return [[] for _ in images]

    v = E.validate_judge(OnlyColorPosition(), per_category=2)
    for name in ("renders", "noise", "blank"):
        assert v[name]["color_position"] == 1 and v[name]["overall"] == 0
    assert np.array(v["shape_confusion"])[:, -1].sum() == sum(len(p.scene.objects) for p in E.make_prompts(2))
    header = E.format_validation(v).splitlines()[0]
    assert header.endswith("| color_attr | overall | color_position |")


def test_cli_names_a_missing_run_dir(capsys):
    with pytest.raises(SystemExit):
        E.main(["shapes", "--ckpt", "/nonexistent/run"])
    assert "/nonexistent/run" in capsys.readouterr().err


def test_cli_checks_the_guidance_interval(capsys):
    with pytest.raises(SystemExit):
        E.main(["shapes", "--ckpt", "/nonexistent/run", "--guidance-interval", "0", "2"])
    assert "argument --guidance-interval: expected a number in [0, 1], got '2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.main(["shapes", "--ckpt", "/nonexistent/run", "--guidance-interval", "0.8", "0.2"])
    assert "--guidance-interval: LO must not exceed HI, got 0.8 0.2" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [
    ("--per-category", "0", "a positive integer"), ("--per-category", "-2", "a positive integer"),
    ("--images-per-prompt", "0", "a positive integer"), ("--images-per-prompt", "-1", "a positive integer"),
    ("--steps", "0", "a positive integer"), ("--batch-size", "0", "a positive integer"),
    ("--per-category", "1.5", "a positive integer"), ("--seed", "-1", "a non-negative integer"),
    ("--guidance", "-1", "a non-negative number"), ("--guidance", "nan", "a non-negative number"),
    ("--shift", "0", "a positive number")])
def test_cli_rejects_nonsensical_numbers(capsys, flag, value, expected):
    # argparse's error (exit 2, usage + the flag) before anything runs; the run dir would be the next error
    with pytest.raises(SystemExit) as error:
        E.main(["shapes", "--ckpt", "/nonexistent/run", flag, value])
    assert error.value.code == 2
    assert f"argument {flag}: expected {expected}, got '{value}'" in capsys.readouterr().err
    assert (sample.positive_int("3"), sample.non_negative_int("0"), sample.non_negative_float("0")) == (3, 0, 0.0)
