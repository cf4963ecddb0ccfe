"""`mmgdino train`'s data path: the COCO check (bad data reported one line each), mmdetection's augmentations,
prompts with sampled negatives read the way transformers' loss reads them, and batching."""

import json

import model_builders as mb
import numpy as np
import pytest
import torch
from datasets import SCENE_CATEGORIES, add_bad_entries, make_scenes
from PIL import Image

from mmgdino.errors import UsageError
from mmgdino.training import augment as aug
from mmgdino.training.data import read_training_set
from mmgdino.training.dataset import TrainingImages
from mmgdino.training.prompts import Collator, PromptSampler, targets

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return mb.offline_processor(tmp_path_factory.mktemp("processor")).tokenizer


# ------------------------------------------------------------------ the check


def test_each_kind_of_bad_data_is_reported_on_one_line_and_the_rest_is_kept(tmp_path):
    path, images = make_scenes(tmp_path, num_images=4)
    good = json.loads(path.read_text())
    expected = add_bad_entries(path, images)
    found = read_training_set(path, images)
    assert found.counts() == expected
    lines = [issue.line() for issue in found.issues]
    assert all("\n" not in line for line in lines) and len(lines) == sum(expected.values())
    assert any("corrupt.png" in line and "not a readable image" in line for line in lines)
    # the four scenes and the empty image stay; the missing, corrupt and wrongly sized images go
    assert sorted(im.path.name for im in found.images) == ["nothing.png"] + [f"scene{i}.png" for i in range(4)]
    assert found.boxes == len(good["annotations"]) + 1  # the clipped box is the only bad one kept
    first = next(im for im in found.images if im.image_id == good["images"][0]["id"])
    assert first.boxes[-1].tolist() == [42, 2, 6, 8]  # [size - 6, 2, 12, 8] clipped at x = 48
    skipped = read_training_set(path, images, empty_images="skip")
    assert "nothing.png" not in [im.path.name for im in skipped.images]
    assert "(skipped)" in [i.line() for i in skipped.issues if i.kind == "no_boxes"][0]


def test_printed_lines_are_capped_per_kind_with_a_count(tmp_path):
    path, images = make_scenes(tmp_path, num_images=2)
    data = json.loads(path.read_text())
    data["annotations"] += [{"id": 1000 + k, "image_id": 1, "category_id": 77, "bbox": [1, 1, 4, 4]} for k in range(5)]
    path.write_text(json.dumps(data))
    lines = read_training_set(path, images).report_lines(limit=2)
    assert len(lines) == 3 and lines[-1] == "... and 3 more: unknown_category"


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d, p: p.write_text("{not json"), "not a JSON file"),
        (lambda d, p: p.write_text(json.dumps({**d, "categories": []})), "no categories"),
        (lambda d, p: p.write_text(json.dumps({**d, "categories": d["categories"] * 2})), "appears twice"),
        (lambda d, p: p.write_text(json.dumps({**d, "annotations": None})), "no 'annotations' list"),
        (lambda d, p: p.write_text(json.dumps({**d, "images": [{"id": 1, "file_name": "gone.png"}]})),
         "no usable image"),
    ],
)  # fmt: skip
def test_a_file_unusable_as_a_whole_is_one_usage_error(tmp_path, change, words):
    path, images = make_scenes(tmp_path, num_images=1)
    change(json.loads(path.read_text()), path)
    with pytest.raises(UsageError, match=words) as caught:
        read_training_set(path, images)
    assert "\n" not in str(caught.value)


def test_an_image_damaged_after_the_check_is_replaced_and_reported_once(tmp_path):
    path, images = make_scenes(tmp_path, num_images=3)
    found = read_training_set(path, images)
    (images / "scene1.png").write_bytes((images / "scene1.png").read_bytes()[:60])  # header intact, data gone
    messages = []
    fixed = aug.Augmentation(scales=(48,), max_size=64, flip=0.0, crop=0.0)
    dataset = TrainingImages(found, fixed, [0.5] * 3, [0.25] * 3, log=messages.append)
    replaced = dataset[1]
    assert torch.equal(replaced["pixel_values"], dataset[2]["pixel_values"])  # the next image took its place
    assert len(messages) == 1 and "scene1.png" in messages[0] and "replaced" in messages[0]
    dataset[1]
    assert len(messages) == 1
    assert replaced["boxes"].shape[1] == 4 and replaced["key"] == (0, 0, 1)


# ------------------------------------------------------------------ augmentations


def test_flip_resize_and_crop_move_boxes_with_the_pixels():
    image = Image.new("RGB", (100, 50))
    boxes = np.array([[10.0, 5.0, 20.0, 10.0]])
    flipped, fb = aug.flip(image, boxes)
    assert fb.tolist() == [[70.0, 5.0, 20.0, 10.0]] and flipped.size == (100, 50)
    resized, rb = aug.resize(image, boxes, 100, 300)  # shorter side 50 -> 100: twice the size
    assert resized.size == (200, 100) and rb.tolist() == [[20.0, 10.0, 40.0, 20.0]]
    kept_size, same = aug.resize(image, boxes, 50, 100)
    assert kept_size is image and same is boxes

    class Draws:  # crop 30 x 40 (h x w) at top 0, left 15
        def __init__(self):
            self.values = iter([30, 40, 0, 15])

        def integers(self, low, high):
            value = next(self.values)
            assert low <= value < high
            return value

    two = np.array([[10.0, 5.0, 20.0, 10.0], [80.0, 40.0, 10.0, 5.0]])
    cropped, cb, labels = aug.crop(image, two, np.array([1, 2]), (20, 40), Draws())
    assert cropped.size == (40, 30)
    assert cb.tolist() == [[0.0, 5.0, 15.0, 10.0]] and labels.tolist() == [1]  # clipped; the second is outside


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    path, images = make_scenes(tmp_path, num_images=4, size=64)
    found = read_training_set(path, images)
    settings = aug.Augmentation.scaled(64, 96)

    def item(epoch, index, seed=0):
        dataset = TrainingImages(found, settings, [0.5] * 3, [0.25] * 3, seed=seed)
        dataset.set_epoch(epoch)
        return dataset[index]

    a, b = item(1, 2), item(1, 2)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and np.array_equal(a["boxes"], b["boxes"])
    others = [item(e, 2, s)["pixel_values"] for e, s in ((0, 0), (2, 0), (1, 1), (3, 0))]
    assert any(o.shape != a["pixel_values"].shape or not torch.equal(o, a["pixel_values"]) for o in others)


def test_scaled_recipe_keeps_mmdetections_proportions():
    full = aug.Augmentation()
    assert full.scales == tuple(range(480, 801, 32)) and full.max_size == 1333 and full.crop_size == (384, 600)
    small = aug.Augmentation.scaled(400, 667)
    assert small.scales[0] == 240 and small.scales[-1] == 400 and small.crop_size == (192, 300)


# ------------------------------------------------------------------ prompts and labels


def _label_maps(input_ids):
    from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import build_label_maps

    ids = torch.tensor([input_ids])
    return build_label_maps(torch.zeros(1, 5, 32), ids)[0]


def test_a_vocabulary_that_fits_is_the_eval_prompt_and_labels_are_its_phrases(tokenizer):
    from mmgdino.evaluation import class_prompts

    names = ["w200", "w201_(thing)", "w202_w203"]
    sampler = PromptSampler(names, tokenizer, 32)
    ids, phrase_of = sampler([2], np.random.default_rng(0))
    (reference,) = class_prompts(names, tokenizer, None, 32)
    assert ids == reference.input_ids and phrase_of == {0: 0, 1: 1, 2: 2}
    maps = _label_maps(ids)  # transformers' loss: phrase k is class k's tokens
    for k, (a, b) in enumerate(reference.spans):
        assert maps[k, : len(ids)].nonzero().flatten().tolist() == list(range(a, b))


def test_a_long_vocabulary_samples_positives_and_negatives_within_the_limit(tokenizer):
    names = [f"w{300 + i}" for i in range(40)]  # 2 + 40 * 2 = 82 tokens: more than 24
    sampler = PromptSampler(names, tokenizer, 24, negatives=5)
    assert not sampler.fits
    prompts = set()
    for seed in range(20):
        present = [3, 17, 17, 30]
        ids, phrase_of = sampler(present, np.random.default_rng(seed))
        assert len(ids) <= 24 and {3, 17, 30} <= set(phrase_of) and len(phrase_of) == 3 + 5
        maps = _label_maps(ids)
        for category, phrase in phrase_of.items():  # the phrase the loss reads is that class's word
            (token,) = maps[phrase, : len(ids)].nonzero().flatten().tolist()
            assert ids[token] == 300 + category
        prompts.add(tuple(ids))
    assert len(prompts) > 10  # the negatives and the order change per draw
    crowded = PromptSampler(names, tokenizer, 10, negatives=85)
    ids, phrase_of = crowded(list(range(40)), np.random.default_rng(0))
    assert len(ids) <= 10 and len(phrase_of) == 4  # only what fits: boxes of the rest are dropped by targets()


def test_a_class_name_the_loss_would_split_is_refused(tokenizer):
    with pytest.raises(UsageError, match="rename it"):
        PromptSampler(["w200", "w201.w202"], tokenizer, 32)


def test_targets_and_batches(tokenizer):
    labels = targets(np.array([[10.0, 20.0, 20.0, 10.0], [0, 0, 5, 5]]), np.array([1, 2]), {1: 0}, 40, 50)
    assert labels["class_labels"].tolist() == [0]  # class 2 not in the prompt
    assert labels["boxes"][0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.2])
    names = [f"w{300 + i}" for i in range(20)]
    boxes = np.array([[1.0, 1.0, 2.0, 2.0]])
    samples = [
        {"pixel_values": torch.ones(3, 4, 6), "boxes": boxes, "classes": np.array([3]), "key": (0, 0, 5)},
        {"pixel_values": torch.ones(3, 5, 3), "boxes": boxes, "classes": np.array([11]), "key": (0, 0, 6)},
    ]
    batch = Collator(PromptSampler(names, tokenizer, 16, negatives=2))(samples)
    assert batch["pixel_values"].shape == (2, 3, 5, 6) and batch["pixel_mask"][0].sum() == 24
    assert batch["pixel_mask"][1, :, 3:].sum() == 0 and batch["pixel_values"][1, :, :, 3:].abs().sum() == 0
    ids = batch["input_ids"][0].tolist()
    assert torch.equal(batch["input_ids"][1], batch["input_ids"][0]) and batch["attention_mask"].all()
    assert 303 in ids and 311 in ids and len(ids) == 2 + 4 * 2  # both images' classes and two negatives
    for sample, label in zip(samples, batch["labels"]):  # each box's phrase is its class's word
        (phrase,) = label["class_labels"].tolist()
        (token,) = _label_maps(ids)[phrase, : len(ids)].nonzero().flatten().tolist()
        assert ids[token] == 300 + int(sample["classes"][0])
    assert torch.equal(
        Collator(PromptSampler(names, tokenizer, 16, negatives=2))(samples)["input_ids"], batch["input_ids"]
    )  # the same keys draw the same prompt (a resumed run's)


def test_scene_colours_are_distinct_per_category():
    assert len(set(SCENE_CATEGORIES.values())) == len(SCENE_CATEGORIES)
