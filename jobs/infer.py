"""Classify a folder or bucket of photos into Parquet with Ray Data (the `animals10 infer` command).

    ray job submit --working-dir . -- python jobs/infer.py \
        --model s3://b/runs/exp1/mobilenet_v2 --input s3://b/photos/ --output s3://b/predictions/

Options: `python jobs/infer.py --help`. Run again with `--resume` after an interruption.
"""

import sys

from animals10.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
