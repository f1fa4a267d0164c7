"""The command line's argument checkers: each turns text into a number or fails with a usage error that
says what was wanted, so that a wrong option ends in one sentence before any work starts."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(valid: Callable[[float], bool], wanted: str, cast: type = float) -> Callable[[str], float]:
    """An argparse type: a number for which `valid` holds, as `cast`, else an error saying what is `wanted`."""

    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails every check
        if not valid(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {wanted}")
        return cast(value)

    return parse


positive_int = number(lambda v: v >= 1 and v.is_integer(), "a whole number of 1 or more", cast=int)
count = number(lambda v: v >= 0 and v.is_integer(), "a whole number of 0 or more", cast=int)
non_negative = number(lambda v: v >= 0, "a number of 0 or more")
share = number(lambda v: 0 < v <= 1, "a share: give a number above 0 and at most 1")
fraction = number(lambda v: 0 < v < 1, "a share of the photos: give a number above 0 and below 1")
probability = number(lambda v: 0 <= v <= 1, "a probability: give a number from 0 to 1 (0 turns it off)")
alpha = number(lambda v: v >= 0, "a Beta distribution's alpha: give a number >= 0 (0 turns it off)")


def add_unknown_arguments(parser: argparse.ArgumentParser) -> None:
    """--unknown-threshold and --no-unknown: how photos that are none of the classes are flagged."""
    unknown = parser.add_mutually_exclusive_group()
    unknown.add_argument(
        "--unknown-threshold",
        type=float,
        default=None,
        metavar="SCORE",
        help="flag a photo unknown above this unknown score (default: the artifact's, chosen on validation so "
        "that 95%% of in-class photos pass)",
    )
    unknown.add_argument(
        "--no-unknown", action="store_true", help="no unknown flag and score (the predicted label is always kept)"
    )
