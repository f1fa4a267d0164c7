"""Train the models with Ray Train and write their artifacts.

    ray job submit --working-dir . -- python jobs/train.py --data s3://my-bucket/raw-img \
        --model custom_cnn --model mobilenet_v2 --num-workers 4 --use-gpu --output s3://my-bucket/runs/exp1

Runs as well on a laptop (`python jobs/train.py --data DIR`), with a local Ray.
"""

import sys

from animals10.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
