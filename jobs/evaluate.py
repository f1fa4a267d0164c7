"""Scores models and writes the comparison report: `python jobs/evaluate.py --model ART --model ART --output DIR`."""

import sys

from animals10.cli.main import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
