"""The demo photos (animals10.demo): a small tree in the Animals-10 layout."""

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
