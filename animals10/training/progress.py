"""Training progress on the driver's console: one line per epoch, while Ray Train runs.

Ray Train calls `EpochReports.after_report` in its controller process after every `ray.train.report`;
it forwards rank 0's metrics through a Ray queue to the driver, which logs them as they come
(`follow_epochs`). Nothing of Ray's own worker output is needed for it, so that output can stay in
Ray's log files.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import Future

from ray.train import UserCallback

logger = logging.getLogger(__name__)


class EpochReports(UserCallback):
    """Puts each epoch's metrics (rank 0's: the workers' sums make them the same on every rank) on a queue."""

    def __init__(self, reports):  # reports: ray.util.queue.Queue
        self.reports = reports

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if not metrics:
            return
        try:
            self.reports.put(dict(metrics[0]), timeout=10)
        except Exception as error:  # noqa: BLE001 - console lines are never worth a failed run
            logger.warning("The epoch's console line was lost (%s); training goes on.", error)


def describe_epoch(model_name: str, metrics: dict, num_epochs: int, best: bool) -> str:
    """One console line: epoch/total, phase, losses and accuracies, learning rate, speed; `*` on the
    best validation loss so far (the epoch `--keep best_val_loss` keeps)."""
    epoch, phase = metrics.get("epoch", 0), metrics.get("phase", "")
    return (
        f"{model_name} epoch {epoch:>{len(str(num_epochs))}}/{num_epochs} {phase:<9} "
        f"train loss {metrics['train_loss']:.3f} acc {metrics['train_accuracy']:6.1%}  "
        f"val loss {metrics['val_loss']:.3f} acc {metrics['val_accuracy']:6.1%}  "
        f"lr {metrics.get('lr', 0):.1e}  {metrics.get('images_per_second', 0):6.1f} img/s" + ("  *" if best else "")
    )


def epoch_queue():
    """The queue the epochs' metrics travel through: an actor on the driver's node, so that it lives as
    long as the driver does, whichever worker nodes are lost."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def follow_epochs(model_name: str, num_epochs: int, reports, fit: Future) -> None:
    """Logs each epoch's line from `reports` until `fit` (Ray Train's run, in a thread) has ended."""
    best_loss = float("inf")
    while True:
        try:
            metrics = reports.get(timeout=0.5)
        except queue.Empty:
            if fit.done() and reports.empty():
                return
            continue
        except Exception as error:  # noqa: BLE001 - the queue is lost: training goes on without its lines
            logger.warning("Epoch lines stop here (%s); training goes on.", error)
            return
        best = metrics["val_loss"] < best_loss
        best_loss = min(best_loss, metrics["val_loss"])
        logger.info("%s", describe_epoch(model_name, metrics, num_epochs, best))
