"""`animals10 demo` (what `make demo` runs) and `animals10 demo-data`: synthetic photos, both models
trained on them with Ray Train, the table of results and the comparison report."""

from __future__ import annotations

import sys
from pathlib import Path

from animals10.cli.train import results_table
from animals10.demo import write_demo_data
from animals10.report import write_report
from animals10.training.config import recipe_config
from animals10.training.driver import train_models

DEMO_DATA_EXAMPLES = """\
  animals10 demo-data runs/demo-photos
  animals10 demo-data runs/demo-photos --images-per-class 100 --seed 1"""

DEMO_EXAMPLES = """\
  animals10 demo                       # what `make demo` runs: runs/demo
  animals10 demo --output runs/demo2 --epochs 10 --image-size 128"""


def add_demo_data_arguments(parser) -> None:
    parser.add_argument("output_dir", help="where to write <dir>/<class>/<photo>.jpg")
    parser.add_argument("--images-per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)


def run_demo_data(args) -> int:
    root = write_demo_data(args.output_dir, args.images_per_class, args.seed)
    print(f"Demo photos written to {root}")
    return 0


def add_demo_arguments(parser) -> None:
    parser.add_argument("--output", default="runs/demo", help="where the demo data, artifacts and report go")
    parser.add_argument("--images-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=96, help="small for a quick CPU run (the study used 128)")


def run_demo(args) -> int:
    """Demo data -> both models trained with Ray Train (the transfer model pretrained, offline) -> table."""
    output = Path(args.output)
    data_dir = output / "data" / "raw-img"
    if not data_dir.exists():
        write_demo_data(data_dir, args.images_per_class)
    # The study's recipe: the quickest on a CPU (`--recipe best` is the default of jobs/train.py).
    config = recipe_config(
        "study",
        data=str(data_dir),
        output=str(output / "models"),
        models=("custom_cnn", "efficientnet_lite0"),
        epochs=args.epochs,
        image_size=args.image_size,
    )
    models = train_models(config)
    print()
    print(results_table(models).to_text())
    report = write_report([m.artifact_uri for m in models], str(output / "report"))
    print(report.best_reason)
    best_uri = next(m.artifact_uri for m in models if m.name == report.best_model)
    print(next_steps(output, best_uri, data_dir))
    return 0


def next_steps(output: Path, model: str, data_dir: Path) -> str:
    """Three things to try with the demo's best model (its artifact `model`), as commands to copy."""
    program = sys.argv[0] if Path(sys.argv[0]).name == "animals10" else "animals10"
    photo = sorted(data_dir.glob("*/*.jpg"))[0]
    return "\n".join(
        [
            "",
            f"Next, with the demo's best model ({model}):",
            "  # classify a folder of photos into Parquet",
            f"  {program} infer --model {model} --input {data_dir} --output {output / 'predictions'}",
            "  # serve it, then open http://127.0.0.1:8000/ in a browser or send it a photo",
            f"  {program} serve --model {model}",
            f"  curl -s -H 'content-type: image/jpeg' --data-binary @{photo} http://127.0.0.1:8000/predict",
            "  # read the report",
            f"  open {output / 'report' / 'report.html'}",
        ]
    )
