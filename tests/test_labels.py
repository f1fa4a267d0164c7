import pytest

from animals10.labels import ANIMALS10_CLASSES, class_name_for_folder, class_names_for_folders


def test_italian_folders_become_english_in_animals10_order():
    folders = ["scoiattolo", "cane", "gatto", "ragno", "pecora", "mucca", "gallina", "farfalla", "elefante", "cavallo"]
    assert class_names_for_folders(folders) == [
        "dog",
        "horse",
        "elephant",
        "butterfly",
        "chicken",
        "cat",
        "cow",
        "sheep",
        "spider",
        "squirrel",
    ]
    assert class_names_for_folders(folders) == ANIMALS10_CLASSES


def test_other_folder_names_stay_as_they_are_sorted():
    assert class_names_for_folders(["zebra", "Aardvark", "moose"]) == ["Aardvark", "moose", "zebra"]
    assert class_name_for_folder("Cane") == "dog"
    assert class_name_for_folder("my_class") == "my_class"


def test_two_folders_with_the_same_class_are_refused():
    with pytest.raises(ValueError, match="same class"):
        class_names_for_folders(["cane", "dog"])
