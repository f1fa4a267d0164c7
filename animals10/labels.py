"""Class names: from the folders of a labelled tree, with Animals-10's Italian names in English."""

from __future__ import annotations

# The Kaggle download's raw-img/ folders are Italian. Sorted by folder name, these give the
# canonical Animals-10 order: dog, horse, elephant, butterfly, chicken, cat, cow, sheep, spider, squirrel.
ITALIAN_TO_ENGLISH = {
    "cane": "dog",
    "cavallo": "horse",
    "elefante": "elephant",
    "farfalla": "butterfly",
    "gallina": "chicken",
    "gatto": "cat",
    "mucca": "cow",
    "pecora": "sheep",
    "ragno": "spider",
    "scoiattolo": "squirrel",
}

ANIMALS10_CLASSES = [ITALIAN_TO_ENGLISH[name] for name in sorted(ITALIAN_TO_ENGLISH)]


def class_name_for_folder(folder: str) -> str:
    """The class a folder holds: Italian Animals-10 names become English, others stay as they are."""
    return ITALIAN_TO_ENGLISH.get(folder.strip().lower(), folder)


def class_names_for_folders(folders: list[str]) -> list[str]:
    """Class names in a stable order: sorted by folder name, so the Italian tree keeps Animals-10's order."""
    names = [class_name_for_folder(f) for f in sorted(set(folders))]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Folders map to the same class name(s) {duplicates}; rename one of them.")
    return names
