"""The Serve deployment's settings: defaults, and the `user_config` that may change on a running replica."""

from __future__ import annotations

from dataclasses import dataclass

from animals10.card import check_threshold, read_card
from animals10.errors import ArtifactError

APP_NAME = "animals10"
DEPLOYMENT_NAME = "Classifier"
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0  # batches fill from the backlog while the model is busy (see `classify`)
DEFAULT_MAX_BODY_MB = 10.0
DEFAULT_MAX_FILES = 16
# Requests a replica accepts at once: at least max_batch_size * MAX_CONCURRENT_BATCHES, or batches
# never fill (ray-project/ray#43288). A waiting request holds its body and one decoded photo (~50 KB).
DEFAULT_MAX_ONGOING_REQUESTS = 256
# Requests a replica holds beyond those: more are refused at once with 503 and Retry-After, instead of
# queueing without end (ray-project/ray#42950). A quarter of the working set keeps the wait of those
# admitted close to their time at capacity.
DEFAULT_MAX_QUEUED_REQUESTS = 64
RETRY_AFTER_S = 1
# Room above the admission limit in Serve's own max_ongoing_requests, so that the requests to refuse
# reach the replica (which answers them in JSON at once) instead of waiting in Serve's router. Large:
# a replica that Serve sees as full is retried by two routing tasks a replica, each backing off to
# 0.5 s, so after a burst the router handed over 4 requests a second while the replica sat idle (30 to
# 60 s waits in benchmarks/serve_soak.py with 64).
SHED_HEADROOM = 1024
ROUTER_QUEUE_FACTOR = 4
API_KEY_ENV = "ANIMALS10_API_KEY"
# Batches @serve.batch may hand over while the model is busy; they are merged (see `classify`).
MAX_CONCURRENT_BATCHES = 16


@dataclass(frozen=True)
class ModelConfig:
    """The deployment's `user_config`: what may change on a running replica."""

    model_uri: str
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S
    tta: bool = False  # test-time augmentation: average with the mirrored photo
    unknown: bool = True  # flag photos that are none of the classes, where the artifact can
    unknown_threshold: float | None = None  # None: the artifact's

    @classmethod
    def from_user_config(cls, values: dict | None) -> ModelConfig:
        values = dict(values or {})
        keys = {"model_uri", "max_batch_size", "batch_wait_timeout_s", "tta", "unknown", "unknown_threshold"}
        if set(values) - keys:
            raise ValueError(f"Unknown user_config keys {sorted(set(values) - keys)}; use {', '.join(sorted(keys))}.")
        if not values.get("model_uri"):
            raise ValueError(
                "The deployment's user_config has no model_uri; set it to a model artifact directory or s3:// URI."
            )
        config = cls(
            str(values["model_uri"]),
            int(values.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
            float(values.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)),
            bool(values.get("tta", False)),
            bool(values.get("unknown", True)),
            None if values.get("unknown_threshold") is None else float(values["unknown_threshold"]),
        )
        if config.max_batch_size < 1 or config.batch_wait_timeout_s < 0:
            raise ValueError("user_config needs max_batch_size >= 1 and batch_wait_timeout_s >= 0.")
        return config

    def to_user_config(self) -> dict:
        return {
            "model_uri": self.model_uri,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "tta": self.tta,
            "unknown": self.unknown,
            "unknown_threshold": self.unknown_threshold,
        }

    def model_settings(self) -> tuple:
        """What the loaded Predictor depends on: a change reloads it."""
        return self.model_uri, self.tta, self.unknown, self.unknown_threshold


def check_readable_threshold(model_uri: str, threshold: float | None) -> None:
    """`card.check_threshold` where the card can be read here; a path only the cluster's nodes
    have is left to the replicas, which check it when they load the model."""
    if threshold is None:
        return
    try:
        card = read_card(model_uri)
    except ArtifactError:
        return
    check_threshold(card.open_world, threshold, model_uri)
