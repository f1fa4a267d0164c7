"""The package's layers: the pure layer imports without Ray, and every module imports on its own (no
import cycles). Each check runs in a fresh interpreter, so that what this test session imported does
not hide a missing or circular import."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Everything that needs no cluster: training's step, scoring, the report, the artifact and its predictor.
# Ray adapters (cluster, training.worker/driver, batch, serve) and the commands (cli) import Ray.
PURE_MODULES = [
    "animals10.errors",
    "animals10.labels",
    "animals10.device",
    "animals10.storage",
    "animals10.imaging",
    "animals10.data",
    "animals10.card",
    "animals10.artifact",
    "animals10.predictor",
    "animals10.export",
    "animals10.transforms",
    "animals10.metrics",
    "animals10.calibration",
    "animals10.open_world",
    "animals10.demo",
    "animals10.models.registry",
    "animals10.models.custom_cnn",
    "animals10.models.transfer",
    "animals10.training.config",
    "animals10.training.engine",
    "animals10.evaluation.sets",
    "animals10.evaluation.parquet",
    "animals10.evaluation.scoring",
    "animals10.evaluation.unknown",
    "animals10.report.plots",
    "animals10.report.document",
    "animals10.report.contents",
    "animals10.report.writer",
]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_pure_layer_imports_without_ray():
    code = f"""
import importlib, json, sys
for name in {PURE_MODULES!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))))
"""
    done = _run(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_batch_driver_imports_without_torch():
    """The batch job's driver plans, starts the pipeline and adds up counts: torch (about 470 MiB and
    seconds of import) belongs in the replicas only, so the driver's memory stays small at any scale."""
    code = """
import json, sys
import animals10.cli.infer, animals10.batch.job
print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
"""
    done = _run(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_every_module_imports_on_its_own():
    """Each module of animals10 imported first, with no other module of the package loaded: a circular
    import fails here even where the package's usual import order hides it. One interpreter for all of
    them: the package's modules are dropped before each import; third-party ones stay loaded."""
    code = """
import importlib, json, pkgutil, sys, traceback
import animals10
names = sorted(m.name for m in pkgutil.walk_packages(animals10.__path__, "animals10."))
names = [n for n in names if n != "animals10.cli.__main__"]  # runs the command line when imported
failures = {}
for name in names:
    for loaded in [m for m in sys.modules if m == "animals10" or m.startswith("animals10.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps({"names": names, "failures": failures}))
"""
    done = _run(code)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failures"] == {}
    # The walk found the whole package: the pure layer and the Ray adapters and commands alike.
    assert set(PURE_MODULES) | {"animals10.cluster", "animals10.training.driver", "animals10.cli.main"} <= set(
        result["names"]
    )
