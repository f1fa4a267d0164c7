"""Serve a model artifact over HTTP with Ray Serve: `python jobs/serve.py --model ARTIFACT [options]`."""

import sys

from animals10.cli.main import main

sys.exit(main(["serve", *sys.argv[1:]]))
