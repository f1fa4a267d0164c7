"""`animals10 export`: a model artifact as ONNX or TorchScript, with its description beside it."""

from __future__ import annotations

import argparse

from animals10.export import FORMATS, export_model

EXPORT_EXAMPLES = """\
  animals10 export --model runs/exp1/efficientnet_lite0                      # runs/exp1/efficientnet_lite0/model.onnx
  animals10 export --model runs/exp1/custom_cnn --format torchscript --output custom_cnn.pt
  animals10 export --model s3://b/runs/exp1/efficientnet_lite0 --output efficientnet_lite0.onnx"""


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model artifact directory or s3:// URI")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx", help="onnx (default) or torchscript")
    parser.add_argument(
        "--output", help="file to write, local or s3:// (default: model.onnx or model.pt in the artifact)"
    )


def run_export(args: argparse.Namespace) -> int:
    output = export_model(args.model, args.format, args.output)
    print(f"Exported to {output}: (batch, S, S, 3) uint8 RGB photos in, (batch, classes) probabilities out;")
    print(f"class names, input size and the model card in {output}.json")
    return 0
