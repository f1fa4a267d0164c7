"""Shared fixtures: one local Ray for the whole session, a loopback S3 server, small test photos."""

from __future__ import annotations

import io
import os
import socket

import numpy as np
import pytest
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 settings must be in the environment before Ray starts, so that its workers inherit them.
# Fake credentials: the loopback moto server accepts any.
S3_PORT = _free_port()
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for all tests. Logical CPUs above the 2 real cores, so that 2 training
    workers and Ray Data's decoding tasks can be scheduled side by side."""
    import ray

    ray.init(address="local", num_cpus=6, include_dashboard=False, ignore_reinit_error=True, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto in server mode) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh, empty bucket on the loopback S3 server; yields its name."""
    from animals10.storage import s3_client

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid()}"
    s3_client().create_bucket(Bucket=name)
    yield name


def jpeg_bytes(color=(200, 30, 30), size=(96, 72), quality=90) -> bytes:
    image = Image.new("RGB", size, color)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory):
    """A small synthetic Animals-10 tree (Italian folder names), shared by the Ray tests."""
    from animals10.demo import write_demo_data

    root = tmp_path_factory.mktemp("demo") / "raw-img"
    write_demo_data(root, images_per_class=12, seed=0)
    return root


@pytest.fixture(scope="session")
def untrained_artifact(tmp_path_factory):
    """A custom_cnn artifact with random weights: enough to test loading, batching and serving paths."""
    import torch

    from animals10.artifact import save_artifact
    from animals10.card import ModelCard, Preprocessing
    from animals10.labels import ANIMALS10_CLASSES
    from animals10.models import create_model

    torch.manual_seed(0)
    uri = str(tmp_path_factory.mktemp("artifact") / "custom_cnn")
    # Calibrated, so that every path that turns logits into probabilities is checked to apply it alike.
    card = ModelCard(
        "custom_cnn", list(ANIMALS10_CLASSES), Preprocessing(image_size=64), calibration={"temperature": 1.5}
    )
    save_artifact(create_model("custom_cnn", len(ANIMALS10_CLASSES)), card, uri)
    add_open_world(uri, seed=0)
    return uri


def add_open_world(uri: str, seed: int, photos: int = 60) -> None:
    """Gives an artifact open-world statistics from demo-like photos, and a threshold at their median score,
    so that about half of such photos are flagged unknown (both answers are exercised)."""
    import torch

    from animals10.artifact import write_card
    from animals10.card import read_card
    from animals10.demo import draw_demo_photo
    from animals10.open_world import FeatureStatistics, feature_sums, unknown_scores, write_statistics
    from animals10.predictor import Predictor

    card = read_card(uri)
    size = card.preprocessing.image_size
    rng = np.random.default_rng(seed)
    drawn = [draw_demo_photo(i % 10, 10, rng).convert("RGB").resize((size, size)) for i in range(photos)]
    images = np.stack([np.asarray(photo) for photo in drawn])
    predictor = Predictor(uri, device="cpu", unknown=False)
    prediction = predictor.predict(images, embeddings=True)
    labels = np.arange(photos) % len(card.class_names)
    statistics = FeatureStatistics.from_sums(feature_sums(prediction.embeddings, labels, len(card.class_names)), 10)
    scores = unknown_scores(
        torch.as_tensor(prediction.probabilities), torch.as_tensor(prediction.embeddings), statistics
    )
    write_statistics(uri, statistics)
    card.open_world = {"score": "mahalanobis", "threshold": float(np.median(scores["mahalanobis"]))}
    write_card(card, uri)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, demo_tree):
    """Two artifacts trained on the demo tree's training split: 'custom_cnn' (trained for a few hundred
    photo-steps, well above chance) and 'barely_trained' (two steps), each with a history.json."""
    import torch

    from animals10.card import Preprocessing
    from animals10.data import read_labelled_tree, split_indices
    from animals10.imaging import load_array
    from animals10.models import create_model
    from animals10.transforms import to_model_input
    from tests.scoring_helpers import IMAGE_SIZE, SPLIT_SEED, TINY_CNN, VAL_FRACTION, _history, _save

    tree = read_labelled_tree(str(demo_tree))
    train, _ = split_indices(tree, VAL_FRACTION, SPLIT_SEED)
    images = torch.as_tensor(
        np.stack([load_array(open(tree.paths[i], "rb").read(), Preprocessing(IMAGE_SIZE)) for i in train])
    )
    labels = torch.as_tensor([tree.labels[i] for i in train])
    x = to_model_input(images, Preprocessing(image_size=IMAGE_SIZE))
    root = tmp_path_factory.mktemp("runs")
    uris = {}
    for name, steps in (("custom_cnn", 60), ("barely_trained", 2)):
        torch.manual_seed(0)
        model = create_model("custom_cnn", len(tree.class_names), **TINY_CNN)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            batch = torch.randint(0, len(x), (32,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        history = (
            _history([("train", 4, 1e-2), ("train", 2, 1e-3)])
            if name == "custom_cnn"
            else _history([("head", 2, 1e-3), ("fine_tune", 3, 1e-4)])
        )
        uris[name] = _save(model, str(root / name), tree, history)
    add_open_world(uris["custom_cnn"], seed=1)  # barely_trained stays without, as an older artifact
    return uris


def random_photo(seed: int = 0, size=(120, 90)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
