"""CPU images/s of an exported ONNX model (onnxruntime) against the package's Predictor, on the same photos.

    .venv/bin/python benchmarks/export_speed.py [--images ../shared/data/bench-images] [--models efficientnet_lite0]
        [--batch-size 32] [--rounds 3] [--threads N]

Each model is an artifact with the architecture's ImageNet backbone where it ships offline
(efficientnet_lite0) or random weights (speed does not depend on them), exported with `animals10 export`.
The photos are decoded once, at the model's input size, so that both sides time the network only:
scaling, normalisation, the forward pass and the softmax. Baseline: `Predictor.predict_probabilities`
(torch, float32 on the CPU) in the same process, on the same batches, with the same number of threads.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animals10.artifact import save_artifact
from animals10.card import ModelCard, Preprocessing
from animals10.export import export_model
from animals10.imaging import load_array
from animals10.labels import ANIMALS10_CLASSES
from animals10.models import create_model, get_model_spec
from animals10.predictor import Predictor

SIZES = {"custom_cnn": 72, "efficientnet_lite0": 224, "mobilenet_v2": 224}


def build_artifact(root: Path, name: str) -> str:
    spec = get_model_spec(name)
    kwargs = {"scattering": 8} if name == "custom_cnn" else {}
    model = create_model(name, len(ANIMALS10_CLASSES), pretrained=name == "efficientnet_lite0", **kwargs)
    card = ModelCard(name, list(ANIMALS10_CLASSES), Preprocessing(SIZES[name], spec.mean, spec.std), kwargs)
    save_artifact(model, card, str(root / name))
    return str(root / name)


def images_per_second(run, batches: list[np.ndarray], rounds: int) -> float:
    run(batches[0])  # warm-up
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        best = max(best, sum(map(len, batches)) / (time.perf_counter() - started))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="../shared/data/bench-images")
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "custom_cnn"], choices=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-photos", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    files = files[: args.max_photos]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    print(f"{cpu or platform.machine()}, {args.threads} threads, {len(files)} photos")
    print("| model | Predictor (torch) img/s | ONNX Runtime img/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            uri = build_artifact(Path(tmp), name)
            photos = np.stack([load_array(path.read_bytes(), Preprocessing(SIZES[name])) for path in files])
            batches = [photos[i : i + args.batch_size] for i in range(0, len(photos), args.batch_size)]
            predictor = Predictor(uri, device="cpu", mixed_precision=False)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = onnxruntime.InferenceSession(export_model(uri), options, providers=["CPUExecutionProvider"])
            torch_rate = images_per_second(predictor.predict_probabilities, batches, args.rounds)
            onnx_rate = images_per_second(lambda batch, s=session: s.run(None, {"images": batch}), batches, args.rounds)
            print(f"| {name} ({SIZES[name]} px) | {torch_rate:.1f} | {onnx_rate:.1f} | {onnx_rate / torch_rate:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
