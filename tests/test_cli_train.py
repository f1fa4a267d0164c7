"""`animals10 train` (animals10.cli.train): its options build the recipe with their changes, and bad
input is one sentence and a non-zero exit, found before Ray starts."""

import contextlib
import os

import pytest

from animals10.cli.main import main
from animals10.training.config import recipe_config


def test_command_line_builds_the_recipe_with_its_changes():
    import argparse

    from animals10.cli.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(
        parser.parse_args(["--data", "d", "--mixup", "0.2", "--trivial-augment", "--batch-size", "8"])
    )
    cnn = config.for_model("custom_cnn")
    assert (
        cnn.augmentation.mixup_alpha == 0.2
        and cnn.augmentation.trivial_augment
        and cnn.augmentation.crop_scale == (0.35, 1.0)
    )
    assert cnn.batch_size == 8 and cnn.image_size == 64 and config.recipe == "best" and cnn.cache_decoded is None
    changed = config_from_args(
        parser.parse_args(
            [
                "--data",
                "d",
                "--keep",
                "best_val_loss",
                "--no-freeze-batchnorm",
                "--no-imagenet-head",
                "--no-cache-decoded",
            ]
        )
    )
    transfer = changed.for_model("efficientnet_lite0")
    assert (transfer.keep, transfer.freeze_batchnorm, transfer.imagenet_head, transfer.cache_decoded) == (
        "best_val_loss",
        False,
        False,
        False,
    )
    assert cnn.model_kwargs == {"scattering": 8} and config.for_model("efficientnet_lite0").model_kwargs == {}
    for given, kwargs in (("0", {}), ("4", {"scattering": 4})):
        scattering = config_from_args(parser.parse_args(["--data", "d", "--scattering", given]))
        assert (
            scattering.for_model("custom_cnn").model_kwargs == kwargs and scattering.for_model("custom_cnn").copies == 4
        )
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--scattering", "2.5"])
    grey = config_from_args(parser.parse_args(["--data", "d", "--grayscale", "0.3"]))
    assert (
        grey.for_model("custom_cnn").augmentation.grayscale
        == grey.for_model("efficientnet_lite0").augmentation.grayscale
        == 0.3
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--cutmix", "-1"])
    for wrong in ("1.5", "-0.1", "grey"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--grayscale", wrong])
    assert (
        config.val_fraction == 0.2
        and config_from_args(parser.parse_args(["--data", "d", "--val-fraction", "0.1"])).val_fraction == 0.1
    )
    for share in ("0", "1", "ten"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--val-fraction", share])
    with pytest.raises(ValueError, match="val_fraction must be above 0 and below 1"):
        recipe_config("best", val_fraction=0.0)


def test_copies_on_the_command_line():
    import argparse

    from animals10.cli.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args(["--data", "d", "--copies", "2"]))
    assert config.for_model("custom_cnn").copies == 2 and config.for_model("efficientnet_lite0").copies == 2
    for wrong in ("0", "1.5", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--copies", wrong])


def make_one_class_tree(root):
    from tests.conftest import jpeg_bytes

    (root / "cane").mkdir(parents=True)
    (root / "cane" / "a.jpg").write_bytes(jpeg_bytes())
    return root


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/missing"], "does not exist"),
        (["--data", "{tmp}/empty"], "No images were found"),
        (["--data", "{tmp}/one-class"], "Only one class folder"),
        (["--data", "{tmp}/one-class", "--model", "resnet9000"], "argument --model: Unknown model 'resnet9000'"),
        (
            ["--data", "s3://no-such-bucket-anywhere/raw-img", "--s3-endpoint", "http://127.0.0.1:9"],
            "Cannot reach the S3 endpoint",
        ),
        (["--data", "{demo}", "--model", "mobilenet_v2"], "MobileNetV2's ImageNet weights"),
    ],
)
def test_bad_input_is_one_sentence_and_a_non_zero_exit(tmp_path, demo_tree, monkeypatch, capsys, args, message):
    (tmp_path / "empty").mkdir()
    make_one_class_tree(tmp_path / "one-class")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached MobileNetV2 weights
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # --s3-endpoint sets AWS_ENDPOINT_URL for the process: restored after the test for the others.
    monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL", ""))
    args = [a.format(tmp=tmp_path, demo=demo_tree) for a in args]
    usage_error = message.startswith("argument ")  # argparse's: the usage, then the error
    with pytest.raises(SystemExit) if usage_error else contextlib.nullcontext():
        code = main(["train", *args, "--output", str(tmp_path / "out")])
        assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if not usage_error:
        assert err.startswith("error: ") and err.count("\n") == 1
