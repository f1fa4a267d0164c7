"""`make demo`'s command (animals10.cli.demo), small: demo photos -> both models through Ray Train -> table
-> report."""

from pathlib import Path

from animals10.cli.main import main


def test_demo_trains_both_models_and_writes_the_report(ray_session, tmp_path, capsys):
    code = main(["demo", "--output", str(tmp_path), "--images-per-class", "5", "--epochs", "1", "--image-size", "32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "custom_cnn" in out and "efficientnet_lite0" in out and "Accuracy" in out
    for name in ("custom_cnn", "efficientnet_lite0"):
        assert (tmp_path / "models" / name / "model_card.json").is_file()
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    assert "Report:" in out and Path(out.split("Report: ")[1].split()[0]).is_file()
