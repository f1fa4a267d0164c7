"""The report's pictures: training curves, confusion matrices, F1 per class and sample predictions.

Drawn with matplotlib's object API on the Agg canvas: headless, and no global pyplot state. Each
`plot_*` returns a Figure; `figure_png` turns it into PNG bytes of a predictable size.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np

from animals10 import storage
from animals10.evaluation import ModelEvaluation

logger = logging.getLogger(__name__)

DPI = 100
SAMPLE_CELL_INCHES = (2.3, 2.7)  # per photo in the sample grid: width, height (photo and two caption lines)
SAMPLE_TITLE_INCHES = 0.5
RIGHT_COLOUR = "#1a7f37"
WRONG_COLOUR = "#cf222e"
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"


def new_figure(width_inches: float, height_inches: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")


def figure_png(figure) -> bytes:
    """PNG bytes of exactly figsize x DPI pixels (no tight bounding box, so sizes are predictable)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _epochs_axis(history: list[dict]) -> np.ndarray:
    epochs = [row.get("epoch") for row in history]
    if all(isinstance(e, (int, float)) for e in epochs) and all(b > a for a, b in zip(epochs, epochs[1:])):
        return np.asarray(epochs, dtype=float)
    return np.arange(1, len(history) + 1, dtype=float)  # epochs restart per phase: count them across phases


def plot_training_curves(history: list[dict], title: str, kept_epoch: int | None = None):
    """Loss, accuracy and learning rate per epoch; training vs validation; phase switches and
    learning-rate changes as vertical lines; the epoch whose weights the artifact kept starred
    (`kept_epoch`, 1-based position in `history`; by default the best validation accuracy)."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    x = _epochs_axis(history)
    figure = new_figure(15, 4.4)
    loss_ax, accuracy_ax, lr_ax = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.75]})
    figure.suptitle(title, fontsize=13, fontweight="bold")

    phases = [row.get("phase") or "" for row in history]
    switches = [i for i in range(1, len(history)) if phases[i] != phases[i - 1]]
    rates = [row.get("lr") for row in history]
    lr_changes = [
        i
        for i in range(1, len(history))
        if rates[i] is not None and rates[i - 1] is not None and not math.isclose(rates[i], rates[i - 1], rel_tol=1e-6)
    ]
    # Many changes (a per-epoch schedule) would hide the curves; the LR panel shows them anyway.
    marked_lr_changes = [i for i in lr_changes if i not in switches] if len(lr_changes) <= 6 else []

    def mark(ax, with_labels: bool):
        # Each phase after the first on a light grey background, named at its top left.
        bounds = [0, *switches, len(history)]
        for n, (start, end) in enumerate(zip(bounds, bounds[1:])):
            if switches and n % 2 == 1:
                ax.axvspan(x[start] - 0.5, x[end - 1] + 0.5, color="#f0f0f0", zorder=0)
            if switches and with_labels:
                ax.text(
                    x[start] - 0.45 if start else x[0],
                    0.98,
                    phases[start].replace("_", "-"),
                    transform=ax.get_xaxis_transform(),
                    fontsize=8,
                    color="#555555",
                    va="top",
                )
        for i in switches:
            ax.axvline(
                x[i] - 0.5,
                color="#555555",
                linestyle="--",
                linewidth=1.2,
                label="phase switch" if with_labels and i == switches[0] else None,
            )
        for n, i in enumerate(marked_lr_changes):
            ax.axvline(
                x[i] - 0.5,
                color="#8250df",
                linestyle=":",
                linewidth=1.2,
                label="learning rate changed" if with_labels and n == 0 else None,
            )

    for ax, key, label in ((loss_ax, "loss", "Loss"), (accuracy_ax, "accuracy", "Accuracy")):
        ax.plot(x, [row[f"train_{key}"] for row in history], "-o", color=TRAIN_COLOUR, markersize=3, label="training")
        ax.plot(x, [row[f"val_{key}"] for row in history], "-o", color=VAL_COLOUR, markersize=3, label="validation")
        mark(ax, with_labels=True)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if kept_epoch is not None and 1 <= kept_epoch <= len(history):
        kept, what = kept_epoch - 1, "kept"
    else:
        kept, what = int(np.argmax([row["val_accuracy"] for row in history])), "best"
    for ax, key, value in ((accuracy_ax, "val_accuracy", "{:.1%}"), (loss_ax, "val_loss", "{:.3f}")):
        label = f"{what}: epoch {x[kept]:.0f}, validation {value.format(history[kept][key])}"
        ax.plot(x[kept], history[kept][key], "*", color="black", markersize=12, zorder=5, label=label)
    accuracy_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    loss_ax.legend(fontsize=8, loc="best", framealpha=0.9)
    accuracy_ax.legend(fontsize=8, loc="best", framealpha=0.9)

    if any(r is not None for r in rates):
        lr_x = [xi for xi, r in zip(x, rates) if r is not None]
        lr_y = [r for r in rates if r is not None]
        lr_ax.step(lr_x, lr_y, where="mid", color="#8250df", linewidth=1.8)
        lr_ax.plot(lr_x, lr_y, "o", color="#8250df", markersize=3)
        if min(lr_y) > 0:
            lr_ax.set_yscale("log")
        if not lr_changes:
            lr_ax.text(
                0.5,
                0.9,
                f"constant: {lr_y[0]:.0e}",
                ha="center",
                transform=lr_ax.transAxes,
                fontsize=9,
                color="#8250df",
            )
        for i in lr_changes[:6]:
            lr_ax.annotate(
                f"{rates[i]:.0e}",
                (x[i], rates[i]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
                color="#8250df",
            )
        mark(lr_ax, with_labels=False)
    else:
        lr_ax.text(
            0.5, 0.5, "no learning rate recorded", ha="center", va="center", transform=lr_ax.transAxes, color="#555555"
        )
    lr_ax.set_title("Learning rate")
    lr_ax.set_xlabel("epoch")
    lr_ax.grid(alpha=0.3, which="both")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def confusion_figure_inches(num_classes: int) -> tuple[float, float]:
    return max(5.5, 0.62 * num_classes + 2.6), max(5.0, 0.62 * num_classes + 2.2)


def plot_confusion_matrix(matrix, class_names: list[str], title: str):
    """Rows (true classes) normalised to 1, so each cell reads as 'share of this class predicted as that'."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    n = len(class_names)
    figure = new_figure(*confusion_figure_inches(n))
    ax = figure.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=12, fontweight="bold")
    font_size = 9 if n <= 10 else max(5, 9 - (n - 10) // 3)
    for t in range(n):
        for p in range(n):
            value = normalised[t, p]
            colour = "white" if value > 0.55 else ("#222222" if value > 0 else "#999999")
            if value == 0:
                ax.text(p, t, "0", ha="center", va="center", fontsize=font_size, color=colour)
                continue
            # The share, and below it the photo count: shares of small classes can mislead.
            ax.text(p, t - 0.12, f"{value:.2f}", ha="center", va="center", fontsize=font_size, color=colour)
            ax.text(
                p, t + 0.22, f"({int(matrix[t, p])})", ha="center", va="center", fontsize=font_size - 2, color=colour
            )
    return figure


def plot_per_class_f1(evaluations: list[ModelEvaluation]):
    """Grouped bars: each class's F1 for every model."""
    from matplotlib.ticker import MaxNLocator

    class_names = evaluations[0].class_names
    n, num_models = len(class_names), len(evaluations)
    figure = new_figure(max(8.0, 0.9 * n + 2.5), 4.8)
    ax = figure.subplots()
    width = 0.8 / num_models
    for k, evaluation in enumerate(evaluations):
        values = [evaluation.metrics["per_class"].get(name, {}).get("f1", 0.0) for name in class_names]
        bars = ax.bar(
            np.arange(n) + (k - (num_models - 1) / 2) * width,
            values,
            width,
            label=f"{evaluation.name} (macro F1 {evaluation.metrics['macro_f1']:.3f})",
        )
        if num_models * n <= 40:
            ax.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(n), class_names, rotation=30 if n > 8 else 0, ha="right" if n > 8 else "center")
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.set_ylabel("F1")
    ax.set_title("F1 per class", fontsize=12, fontweight="bold")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncols=min(num_models, 3), bbox_to_anchor=(0.5, 1.0), frameon=True)
    return figure


def plot_reliability(evaluation: ModelEvaluation):
    """A reliability diagram: per confidence bin, how often the model was right, against the diagonal of
    perfect calibration; the bars' shade shows how many photos fell in each bin."""
    from animals10.calibration import ECE_BINS, expected_calibration_error, reliability_bins

    bins = reliability_bins(evaluation.confidence, evaluation.y_pred == evaluation.y_true)
    count = bins[:, 0]
    accuracy = np.divide(bins[:, 2], count, out=np.zeros(ECE_BINS), where=count > 0)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    figure = new_figure(5.0, 4.6)
    ax = figure.subplots()
    shade = 0.25 + 0.75 * count / max(count.max(), 1)
    ax.bar(edges[:-1], accuracy, 1 / ECE_BINS, align="edge", color=[(0.2, 0.4, 0.8, a) for a in shade],
           edgecolor="black", linewidth=0.5, label="accuracy in the bin")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("share right")
    ece = expected_calibration_error(bins)
    ax.set_title(f"{evaluation.name}: ECE {ece:.3f} ({int(count.sum())} photos)", fontsize=11, fontweight="bold")
    ax.legend(fontsize=8, loc="upper left")
    return figure


def plot_coverage_accuracy(evaluations: list[ModelEvaluation]):
    """Per model: the accuracy of the known photos kept, as the unknown threshold rises from keeping the
    least doubtful 5% to keeping all; the marker shows where the model's own threshold sits."""
    figure = new_figure(5.6, 4.2)
    ax = figure.subplots()
    for e in evaluations:
        world = e.open_world
        curve = np.asarray(world["coverage_accuracy"])
        (line,) = ax.plot(curve[:, 0], curve[:, 1], marker=".", label=f"{e.name} ({world['score']})")
        coverage = 1 - world["known_flagged"]
        ax.plot([coverage], [np.interp(coverage, curve[:, 0], curve[:, 1])], "o", color=line.get_color(),
                markersize=9, markerfacecolor="none")  # fmt: skip
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage: share of known photos kept")
    ax.set_ylabel("accuracy of the kept photos")
    ax.set_title("Coverage and accuracy (circle: the model's threshold)", fontsize=11, fontweight="bold")
    ax.legend(fontsize=8, loc="lower left")
    return figure


def sample_grid_shape(num_photos: int) -> tuple[int, int]:
    """(rows, columns) of the sample grid: as square as possible."""
    columns = max(1, math.ceil(math.sqrt(num_photos)))
    return max(1, math.ceil(num_photos / columns)), columns


def sample_grid_pixels(num_photos: int) -> tuple[int, int]:
    """(width, height) in pixels of a sample grid of `num_photos`."""
    rows, columns = sample_grid_shape(num_photos)
    return round(columns * SAMPLE_CELL_INCHES[0] * DPI), round(
        (rows * SAMPLE_CELL_INCHES[1] + SAMPLE_TITLE_INCHES) * DPI
    )


def _thumbnail(path: str, size: int = 256) -> np.ndarray | None:
    from animals10.imaging import decode_image

    try:
        image = decode_image(storage.read_bytes(path), size)
    except Exception as error:  # noqa: BLE001 - a photo that cannot be shown becomes a blank cell
        logger.warning("Cannot show %s in the sample grid: %s", path, error)
        return None
    image.thumbnail((size, size))
    return np.asarray(image)


def plot_sample_grid(evaluation: ModelEvaluation, indices: list[int], title: str):
    """Photos with 'True: x / Pred: y (confidence)'; wrong predictions in red with a red frame."""
    rows, columns = sample_grid_shape(len(indices))
    figure = new_figure(columns * SAMPLE_CELL_INCHES[0], rows * SAMPLE_CELL_INCHES[1] + SAMPLE_TITLE_INCHES)
    figure.suptitle(title, fontsize=13, fontweight="bold")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    names = evaluation.class_names
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax, i in zip(axes, indices):
        true_name, predicted_name = names[evaluation.y_true[i]], names[evaluation.y_pred[i]]
        right = evaluation.y_true[i] == evaluation.y_pred[i]
        photo = _thumbnail(evaluation.paths[i])
        if photo is None:
            ax.text(0.5, 0.5, "photo unavailable", ha="center", va="center", transform=ax.transAxes, color="#555555")
        else:
            ax.imshow(photo)
        colour = RIGHT_COLOUR if right else WRONG_COLOUR
        mark = "" if right else "  ✗"
        ax.set_title(
            f"True: {true_name}\nPred: {predicted_name} ({evaluation.confidence[i]:.0%}){mark}",
            fontsize=10,
            color=colour,
            fontweight="normal" if right else "bold",
        )
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(colour)
            spine.set_linewidth(1 if right else 4)
    return figure
