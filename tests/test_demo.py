"""`make demo`'s command, small: demo photos -> both models through Ray Train -> table -> report."""

from pathlib import Path

from animals10.cli import main
from animals10.demo import write_demo_data


def test_demo_data_has_the_animals10_layout(tmp_path):
    root = write_demo_data(tmp_path / "raw-img", images_per_class=2)
    folders = sorted(p.name for p in root.iterdir())
    assert folders == [
        "cane",
        "cavallo",
        "elefante",
        "farfalla",
        "gallina",
        "gatto",
        "mucca",
        "pecora",
        "ragno",
        "scoiattolo",
    ]
    assert all(len(list((root / f).glob("*.jpg"))) == 2 for f in folders)


def test_demo_trains_both_models_and_writes_the_report(ray_session, tmp_path, capsys):
    code = main(["demo", "--output", str(tmp_path), "--images-per-class", "5", "--epochs", "1", "--image-size", "32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "custom_cnn" in out and "efficientnet_lite0" in out and "Accuracy" in out
    for name in ("custom_cnn", "efficientnet_lite0"):
        assert (tmp_path / "models" / name / "model_card.json").is_file()
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    assert "Report:" in out and Path(out.split("Report: ")[1].split()[0]).is_file()
