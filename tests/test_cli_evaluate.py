"""`animals10 evaluate` (animals10.cli.evaluate): the report with TTA, and an artifact that does not say
where its training data is. No Ray."""

from __future__ import annotations

import json

from animals10.cli.main import main
from animals10.data import read_labelled_tree
from animals10.models import create_model
from animals10.report.plots import sample_grid_pixels
from tests.scoring_helpers import TINY_CNN, _cli_error, _history, _png_size, _save


def test_cli_writes_the_report_with_tta(artifacts, tmp_path, capsys):
    output = tmp_path / "cli-report"
    code = main(
        [
            "evaluate",
            "--model",
            artifacts["custom_cnn"],
            "--model",
            artifacts["barely_trained"],
            "--output",
            str(output),
            "--samples",
            "4",
            "--batch-size",
            "8",
            "--tta",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"Report written to {output / 'report.html'}" in out
    assert "The best model is custom_cnn" in out
    assert json.loads((output / "metrics.json").read_text())["models"][0]["tta"] is True
    assert _png_size(output / "samples_custom_cnn.png") == sample_grid_pixels(4)


def test_an_artifact_without_its_training_data_asks_for_data(demo_tree, tmp_path, capsys):
    tree = read_labelled_tree(str(demo_tree))
    model = create_model("custom_cnn", len(tree.class_names), **TINY_CNN)
    history = _history([("train", 2, 1e-3)])
    no_record = _save(model, str(tmp_path / "no-record"), tree, history, data_record=False)
    moved = _save(model, str(tmp_path / "moved"), tree, history, data_uri=str(tmp_path / "moved-away"))
    for uri in (no_record, moved):
        code, err = _cli_error(capsys, "--model", uri, "--output", str(tmp_path / "out"))
        assert (
            code != 0
            and err.startswith(f"error: '{uri}'" if uri == moved else "error: ")
            and "--data" in err
            and "\n" not in err
        )
