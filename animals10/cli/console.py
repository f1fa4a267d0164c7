"""What the console shows: our own lines, short, by default; with `-v`, debug lines and Ray's own output.

Ray's output (its workers' logs, its deprecation warnings, its internal error-level lines) is not shown
unless `-v` is given: `animals10.cluster.connect_ray` keeps it in Ray's log files and says where once.
"""

from __future__ import annotations

import logging
import warnings

QUIET_LIBRARIES = ("onnxscript", "onnx_ir", "torch.onnx")  # the ONNX exporter's passes log at INFO


def configure_console(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # Ray's RayDeprecationWarning is one
    warnings.filterwarnings("ignore", category=FutureWarning)
