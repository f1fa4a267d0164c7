"""Models that leave Ray: an artifact exported to ONNX or TorchScript, preprocessing folded in.

The exported network takes what the batch job and the endpoint feed the model, (B, S, S, 3) uint8 RGB
photos already decoded and resized to the artifact's input size S (any batch size), and returns
(B, num_classes) float32 probabilities: the scaling to [0, 1], the normalisation and the softmax are
inside. Beside the file, `<file>.json` holds the class names in order, the input size and the model card.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from animals10 import storage
from animals10.artifact import load_model
from animals10.card import ModelCard
from animals10.errors import ArtifactError
from animals10.transforms import to_model_input

logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class PhotosToProbabilities(nn.Module):
    """(B, S, S, 3) uint8 -> (B, num_classes) probabilities: the Predictor's arithmetic in one network."""

    def __init__(self, model: nn.Module, card: ModelCard):
        super().__init__()
        self.model = model
        self.preprocessing = card.preprocessing  # photos come at its size: the graph scales and normalises only
        self.temperature = float(card.calibration.get("temperature", 1.0))  # the Predictor's calibration

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.model(to_model_input(images, self.preprocessing)) / self.temperature).softmax(dim=1)


def _onnx_bytes(network: nn.Module, example: torch.Tensor) -> bytes:
    from torch.export import Dim

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            network,
            (example,),
            path,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: Dim("batch", min=1, max=4096)}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        return Path(path).read_bytes()


def _torchscript_bytes(network: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer flags the size checks, which hold for photos of the model's size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.save(torch.jit.trace(network, example, check_trace=False), buffer)
    return buffer.getvalue()


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost error, which says why (the outer ones say which exporter step failed)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def export_model(model_uri: str, format: str = "onnx", output: str | None = None) -> str:
    """Writes the artifact at `model_uri` as ONNX or TorchScript to `output` (default: beside the weights,
    `model.onnx` or `model.pt`) and its description to `<output>.json`; returns `output`."""
    if format not in FORMATS:
        raise ArtifactError(f"Unknown export format '{format}'; choose one of: {', '.join(FORMATS)}.")
    loaded = load_model(model_uri, device="cpu")
    card = loaded.card
    output = output or storage.join(model_uri, f"model{FORMATS[format]}")
    network = PhotosToProbabilities(loaded.model, card).eval()
    size = card.preprocessing.image_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    # A failed trace prints whole graphs to stderr in warnings; the error below says why in one line.
    torch_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            data = _onnx_bytes(network, example) if format == "onnx" else _torchscript_bytes(network, example)
    except Exception as error:  # noqa: BLE001 - the exporters raise many types; the reason goes in the sentence
        raise ArtifactError(
            f"The {card.architecture} model in '{model_uri}' cannot be exported to {format}: {_root_cause(error)}"
        ) from error
    finally:
        torch_logger.setLevel(level)
    storage.write_bytes(output, data)
    description = {
        "format": format,
        "input": {"name": "images", "shape": ["batch", size, size, 3], "dtype": "uint8", "colour": "RGB"},
        "output": {"name": "probabilities", "shape": ["batch", len(card.class_names)], "dtype": "float32"},
        "class_names": list(card.class_names),
        "model_card": card.to_dict(),
    }
    storage.write_bytes(f"{output}.json", json.dumps(description, indent=2).encode())
    logger.info("Exported %s (%s) to %s (%.1f MB)", card.id, format, output, len(data) / 1e6)
    return output
