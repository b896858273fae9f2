"""Dataset loaders on tiny trees in each official layout, bad data, and the batch sampler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from s2sd_deploy.errors import S2SDError
from s2sd_deploy.training.config import build_train_config
from s2sd_deploy.training.datasets import ImageSet, hold_out_classes, load_digits_splits, load_splits, splits_for
from s2sd_deploy.training.loading import LabelledImages, eval_transform
from s2sd_deploy.training.sampler import ClassBatchSampler


def _image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)


def _check_splits(train, test, train_classes, test_classes, per_class):
    assert (train.num_classes, test.num_classes) == (train_classes, test_classes)
    assert len(train) == train_classes * per_class and len(test) == test_classes * per_class
    assert sorted(set(train.labels.tolist())) == list(range(train_classes))
    assert not {str(p.parent) for p in train.sources} & {str(p.parent) for p in test.sources}


def test_cub200_layout(tmp_path):
    for c in range(1, 201):
        for i in range(2):
            _image(tmp_path / "CUB_200_2011" / "images" / f"{c:03d}.Bird_{c}" / f"{i}.jpg", c)
    train, test = load_splits("cub200", str(tmp_path))
    _check_splits(train, test, 100, 100, 2)
    assert all(int(p.parent.name[:3]) <= 100 for p in train.sources)


def test_cars196_from_annotations(tmp_path):
    from scipy.io import savemat

    records = np.zeros((1, 196 * 2), dtype=[("relative_im_path", "O"), ("class", "O")])
    for n in range(196 * 2):
        path = f"car_ims/{n:06d}.jpg"
        _image(tmp_path / path, n)
        records[0, n] = (np.array([path]), np.array([[n // 2 + 1]], dtype=np.uint8))
    savemat(str(tmp_path / "cars_annos.mat"), {"annotations": records})
    train, test = load_splits("cars196", str(tmp_path))
    assert (train.num_classes, test.num_classes, len(train), len(test)) == (98, 98, 196, 196)


def test_cars196_from_class_folders(tmp_path):
    for c in range(6):
        _image(tmp_path / f"Car Model {c}" / "a.jpg", c)
    train, test = load_splits("cars196", str(tmp_path))
    assert (train.num_classes, test.num_classes) == (3, 3)


def test_sop_listing(tmp_path):
    for name, classes in (("Ebay_train.txt", range(1, 4)), ("Ebay_test.txt", range(4, 7))):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for i in range(2):
                path = f"bicycle_final/{c}_{i}.JPG"
                _image(tmp_path / "Stanford_Online_Products" / path, c)
                lines.append(f"{len(lines)} {c} 1 {path}")
        (tmp_path / "Stanford_Online_Products" / name).write_text("\n".join(lines) + "\n")
    train, test = load_splits("sop", str(tmp_path))
    assert (train.num_classes, test.num_classes, len(train), len(test)) == (3, 3, 6, 6)


def test_imagefolder_split_by_class(tmp_path):
    for c in range(5):
        for i in range(3):
            _image(tmp_path / f"class{c}" / f"{i}.png", c)
    train, test = load_splits("imagefolder", str(tmp_path))
    _check_splits(train, test, 3, 2, 3)


@pytest.mark.parametrize(
    "dataset,message",
    [
        ("cub200", "images/001.Black_footed_Albatross"),
        ("sop", "Ebay_train.txt"),
        ("cars196", "cars_annos.mat"),
        ("imagefolder", "<class name>"),
    ],
)
def test_missing_root_names_the_layout(tmp_path, dataset, message):
    with pytest.raises(S2SDError, match=f"expected layout: .*{message}"):
        load_splits(dataset, str(tmp_path / "missing"))


def _not_a_png(path):
    path.write_bytes(b"not a png")


def _bomb(path):
    from .test_bad_inputs import decompression_bomb

    decompression_bomb(path)


@pytest.mark.parametrize(
    "write_bad, error",
    [
        (_not_a_png, "cannot decode image .*bad.png.*--skip-bad-images"),
        (_bomb, "bad.png is too large to decode safely.*--skip-bad-images"),
    ],
    ids=["undecodable", "decompression bomb"],
)
def test_a_bad_image_is_named_or_skipped(tmp_path, write_bad, error):
    for c in range(4):
        for i in range(2):
            _image(tmp_path / f"c{c}" / f"{i}.png", c)
    write_bad(tmp_path / "c0" / "bad.png")
    train, _ = load_splits("imagefolder", str(tmp_path))
    dataset = LabelledImages(
        train, eval_transform(build_train_config({"image_size": 8, "resize_size": 8}).preprocessing())
    )
    bad = [i for i, p in enumerate(train.sources) if p.name == "bad.png"][0]
    with pytest.raises(S2SDError, match=error):
        dataset[bad]
    kept, _ = load_splits("imagefolder", str(tmp_path), skip_bad_images=True)
    assert len(kept) == len(train) - 1 and kept.skipped == 1


def test_digits_split():
    train, test = load_digits_splits()
    assert (train.num_classes, test.num_classes) == (5, 5) and len(train) + len(test) == 1797
    assert train.sources[0].size == (8, 8) and train.sources[0].mode == "RGB"


def test_validation_classes_are_held_out_of_training():
    train, test = load_digits_splits()
    fit, validation = splits_for(build_train_config({"dataset": "digits", "validation_classes": 2}))
    assert (fit.num_classes, validation.num_classes) == (3, 2)  # digits 0-2 train, 3-4 validate
    assert len(fit) + len(validation) == len(train)
    held = [i for i, label in enumerate(train.labels) if label >= 3]
    assert [validation.sources[j].tobytes() for j in range(len(held))] == [train.sources[i].tobytes() for i in held]
    assert splits_for(build_train_config({"dataset": "digits"}))[1].labels.tolist() == test.labels.tolist()


def test_held_out_classes_keep_the_skipped_count():
    fit, validation = hold_out_classes(ImageSet(list(range(8)), np.repeat(np.arange(4), 2), skipped=3), 1)
    assert (fit.num_classes, validation.num_classes) == (3, 1) and (fit.skipped, validation.skipped) == (3, 0)


@pytest.mark.parametrize("count", [4, 5])
def test_too_many_validation_classes_is_a_clear_error(count):
    with pytest.raises(S2SDError, match=f"--validation-classes {count}: the training split has 5 classes"):
        splits_for(build_train_config({"dataset": "digits", "validation_classes": count}))


def test_sampler_batches_are_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), 6)
    sampler = ClassBatchSampler(labels, classes_per_batch=4, samples_per_class=3, seed=1, replacement=False)
    first = list(sampler)
    assert len(first) == len(sampler) == 60 // 12
    for batch in first:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and (counts == 3).all()
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_sampler_shards_across_ranks():
    labels = np.repeat(np.arange(8), 10)
    for replacement in (True, False):
        ranks = [list(ClassBatchSampler(labels, 4, 2, 0, r, 2, replacement)) for r in (0, 1)]
        whole = list(ClassBatchSampler(labels, 4, 2, 0, 0, 1, replacement))
        assert len(ranks[0]) == len(ranks[1]) == 5
        assert ranks[0] == whole[0::2][:5] and ranks[1] == whole[1::2][:5]


def test_small_classes_are_sampled_with_replacement_and_counted():
    labels = np.array([0] * 5 + [1] * 1 + [2] * 5)
    sampler = ClassBatchSampler(labels, 3, 4, seed=0, replacement=False)
    assert sampler.small_classes == 1  # class 1 has one image for 4 slots
    batch = next(iter(sampler))
    assert len(batch) == 12 and batch.count(5) == 4


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(S2SDError, match="a batch needs 6 distinct classes .* only 5.*--sampler replacement"):
        ClassBatchSampler(np.repeat(np.arange(5), 4), 6, 2, replacement=False)
    assert len(next(iter(ClassBatchSampler(np.repeat(np.arange(5), 4), 6, 2)))) == 12  # with replacement it can


def test_cli_wrong_root_exits_2_with_layout(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2sd_deploy.cli",
            "train",
            "--dataset",
            "cub200",
            "--data-root",
            str(tmp_path / "nope"),
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "expected layout" in lines[0]


def test_empty_class_folders_are_ignored_and_do_not_shift_the_split(tmp_path, caplog):
    for c in range(4):
        for i in range(2):
            _image(tmp_path / f"c{c}" / f"{i}.png", c)
    (tmp_path / "b-empty").mkdir()  # sorts between the classes: counted, it would move c1 into training's half
    with caplog.at_level("WARNING"):
        train, test = load_splits("imagefolder", str(tmp_path))
    assert {p.parent.name for p in train.sources} == {"c0", "c1"} and {p.parent.name for p in test.sources} == {
        "c2",
        "c3",
    }
    assert "ignoring 1 class folder(s) without images" in caplog.text


def test_file_names_that_are_not_utf8_are_fingerprinted(tmp_path):
    import os

    from s2sd_deploy.training.datasets import fingerprint

    for c in range(4):
        for i in range(2):
            _image(tmp_path / f"c{c}" / f"{i}.png", c)
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    _image(tmp_path / "c0" / odd, 9)
    train, test = load_splits("imagefolder", str(tmp_path))
    assert any(p.name == odd for p in train.sources) and len(fingerprint(train, test)) == 16


def test_glyphs_is_the_default_and_bundled(monkeypatch, tmp_path):
    cfg = build_train_config({})
    assert (cfg.dataset, cfg.backbone, cfg.image_size, cfg.augmentation, cfg.data_root) == (
        "glyphs",
        "resnet18",
        32,
        "affine",
        None,
    )
    train, test = load_splits("glyphs")
    assert train.num_classes > 200 and test.num_classes >= 100 and len(train) > 4000
    assert train.sources[0].mode == "RGB" and train.sources[0].size == (32, 32)
    fit, validation = splits_for(build_train_config({"validation_classes": 50}))
    assert (fit.num_classes, validation.num_classes) == (train.num_classes - 50, 50)


def test_affine_augmentation_is_seeded_and_keeps_the_size():
    import torch

    from s2sd_deploy.training.loading import train_transform

    cfg = build_train_config({})
    image = load_splits("glyphs")[0].sources[0]
    transform = train_transform(cfg)
    torch.manual_seed(0)
    first = [transform(image) for _ in range(4)]
    torch.manual_seed(0)
    again = [transform(image) for _ in range(4)]
    assert all(a.shape == (3, 32, 32) and torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # augmented
