"""Any timm architecture as `timm:<name>` (animals10.models.timm_zoo), with no network: its ImageNet
weights come from a file the test writes. Its `pretrained_cfg` preprocessing is what the artifact stores
and what inference does; it trains through Ray Train, reloads and is served like the registered models."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from animals10.card import read_card
from animals10.cli.main import main
from animals10.errors import WeightsUnavailableError
from animals10.imaging import load_array
from animals10.labels import ANIMALS10_CLASSES
from animals10.models import create_model, get_model_spec
from animals10.predictor import Predictor
from animals10.training.config import TrainConfig, recipe_config
from animals10.transforms import to_model_input
from tests.test_serve import assert_same_prediction, deploy, free_port, serve_config

BATCHNORM_MODEL = "timm:test_efficientnet"  # timm's tiny test models: real architectures, 0.3-0.4 M parameters
LAYERNORM_MODEL = "timm:test_vit"


def imagenet_weights_file(tmp_path, model_name: str, classifier_classes: int = 1000) -> str:
    """The file a user would pass as --weights: timm's own state dict of that architecture."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = timm.create_model(model_name.removeprefix("timm:"), num_classes=classifier_classes)
    path = tmp_path / f"{model_name.removeprefix('timm:')}-{classifier_classes}.safetensors"
    save_file(network.state_dict(), str(path))
    return str(path)


def astronaut_png(size: tuple[int, int]) -> bytes:
    """scikit-image's astronaut photo at another aspect ratio, as PNG (lossless: no JPEG draft decoding)."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize(size, Image.LANCZOS).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("model_name", [LAYERNORM_MODEL, BATCHNORM_MODEL])
@pytest.mark.parametrize("photo_size", [(300, 200), (150, 260)])
def test_inference_input_is_timms_own_evaluation_transform(model_name, photo_size):
    import timm
    from timm.data import create_transform, resolve_data_config

    preprocessing = recipe_config("best", data="d").for_model(model_name).preprocessing(model_name)
    data_config = resolve_data_config(model=timm.create_model(model_name.removeprefix("timm:")))
    assert (preprocessing.image_size, preprocessing.mean, preprocessing.std) == (
        data_config["input_size"][-1],
        tuple(data_config["mean"]),
        tuple(data_config["std"]),
    )
    assert (preprocessing.interpolation, preprocessing.crop_fraction) == (
        data_config["interpolation"],
        data_config["crop_pct"],
    )

    photo = astronaut_png(photo_size)
    ours = to_model_input(torch.from_numpy(np.array(load_array(photo, preprocessing)[None])), preprocessing)
    theirs = create_transform(**data_config)(Image.open(io.BytesIO(photo)).convert("RGB"))[None]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_the_best_recipe_picks_values_per_family_and_the_weights_input_size():
    best = recipe_config("best", data="d")
    layernorm, batchnorm = best.for_model(LAYERNORM_MODEL), best.for_model(BATCHNORM_MODEL)
    assert layernorm.fine_tune_lr < batchnorm.fine_tune_lr == best.for_model("efficientnet_lite0").fine_tune_lr
    assert layernorm.image_size == batchnorm.image_size == 160  # what their weights were made for, not best's 224
    assert [get_model_spec(name).family for name in (BATCHNORM_MODEL, LAYERNORM_MODEL)] == ["batchnorm", "layernorm"]
    assert TrainConfig().with_overrides(image_size=96).for_model(BATCHNORM_MODEL).image_size == 96  # given: it wins


def test_a_timm_model_trains_with_ray_train_reloads_and_is_served(ray_session, demo_tree, tmp_path, capsys):
    from ray import serve

    weights = imagenet_weights_file(tmp_path, BATCHNORM_MODEL)
    output = tmp_path / "run"
    args = ["train", "--data", str(demo_tree), "--model", BATCHNORM_MODEL, "--weights", weights, "--recipe", "study",
            "--epochs", "2", "--batch-size", "16", "--output", str(output)]  # fmt: skip
    assert main(args) == 0  # epoch 1 trains the head, epoch 2 fine-tunes the top of the backbone
    artifact = str(output / "timm-test_efficientnet")
    card = read_card(artifact)
    spec = get_model_spec(BATCHNORM_MODEL)
    assert card.architecture == BATCHNORM_MODEL and card.training["epochs_run"] == 2
    stored = card.preprocessing
    assert (stored.image_size, stored.mean, stored.std) == (160, spec.mean, spec.std)
    assert (stored.interpolation, stored.crop_fraction) == ("bicubic", 0.95)
    history = json.loads((output / "timm-test_efficientnet" / "history.json").read_text())
    assert [h["phase"] for h in history] == ["head", "fine_tune"]

    predictor = Predictor(artifact, device="cpu")
    assert predictor.preprocessing == card.preprocessing
    photo = (demo_tree / "gatto").glob("*.jpg").__next__().read_bytes()
    offline = predictor.describe(predictor.predict(load_array(photo, card.preprocessing)[None]))[0]

    port = free_port()
    deploy(serve_config(port, artifact))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            response = client.post("/predict", content=photo, headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
            assert_same_prediction(response.json()["predictions"][0], offline)
            assert client.get("/model").json()["preprocessing"]["crop_fraction"] == 0.95
    finally:
        serve.shutdown()


def test_weights_that_do_not_fit_name_the_layers(tmp_path):
    resnet_weights = imagenet_weights_file(tmp_path, "timm:test_resnet")
    with pytest.raises(WeightsUnavailableError, match=r"do not fit timm's test_vit .*missing: cls_token"):
        create_model(LAYERNORM_MODEL, 10, pretrained=True, weights_path=resnet_weights)


def test_a_file_with_another_classifier_size_gives_the_backbone_and_a_random_head(tmp_path, caplog):
    from safetensors.torch import load_file

    weights = imagenet_weights_file(tmp_path, LAYERNORM_MODEL, classifier_classes=21)  # say, ImageNet-21k's head
    model = create_model(LAYERNORM_MODEL, 10, pretrained=True, weights_path=weights, head_classes=ANIMALS10_CLASSES)
    torch.testing.assert_close(model.backbone.blocks[0].attn.qkv.weight, load_file(weights)["blocks.0.attn.qkv.weight"])
    assert "no ImageNet-1k classifier" in caplog.text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "timm:convnxt_tiny"], "did you mean timm:convnext_tiny"),
        (["--model", LAYERNORM_MODEL, "--image-size", "128"], "takes only 160 px photos"),
    ],
)
def test_bad_timm_choices_are_one_sentence(tmp_path, demo_tree, capsys, args, message):
    try:
        code = main(["train", "--data", str(demo_tree), "--output", str(tmp_path / "run"), *args])
    except SystemExit as exit:  # argparse's usage error
        code = exit.code
    assert code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_weights_offline_is_one_sentence_naming_weights(tmp_path, demo_tree, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code = main(["train", "--data", str(demo_tree), "--output", str(tmp_path / "run"), "--model", LAYERNORM_MODEL])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "could not fetch the ImageNet weights of test_vit" in err and "--weights FILE" in err


def photos_of(demo_tree, count: int = 4) -> list[bytes]:
    return [path.read_bytes() for path in sorted(demo_tree.glob("*/*.jpg"))[::29][:count]]


def test_the_artifact_rebuilds_without_weights_or_network(tmp_path, demo_tree, monkeypatch):
    """Loading needs only the artifact: no --weights, no Hugging Face."""
    from huggingface_hub import constants

    from animals10.artifact import save_artifact
    from animals10.card import ModelCard

    weights = imagenet_weights_file(tmp_path, LAYERNORM_MODEL)
    model = create_model(LAYERNORM_MODEL, 10, pretrained=True, weights_path=weights, head_classes=ANIMALS10_CLASSES)
    preprocessing = TrainConfig().for_model(LAYERNORM_MODEL).preprocessing(LAYERNORM_MODEL)
    uri = str(tmp_path / "artifact")
    save_artifact(model, ModelCard(LAYERNORM_MODEL, list(ANIMALS10_CLASSES), preprocessing), uri)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    photos = np.stack([load_array(data, preprocessing) for data in photos_of(demo_tree)])
    expected = model.eval()(to_model_input(torch.from_numpy(photos), preprocessing)).softmax(1).detach().numpy()
    np.testing.assert_allclose(Predictor(uri, device="cpu").predict_probabilities(photos), expected, atol=1e-6)
