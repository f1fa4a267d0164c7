"""The comparison report: report.md, a self-contained report.html (pictures embedded) and the PNGs beside
them, from the evaluations of `animals10.evaluate` and the training histories in the artifacts.

Pictures: training curves per model (loss and accuracy, training vs validation, learning-rate changes
and the phase switch marked), a normalised confusion matrix per model, a grid of sample predictions per
model, and a per-class F1 chart comparing the models. Drawn with matplotlib's object API on the Agg
canvas: headless, and no global pyplot state.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np

from animals10 import storage
from animals10.card import read_card
from animals10.errors import ArtifactError, StorageError
from animals10.evaluate import ModelEvaluation, evaluate_models

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
DPI = 100
REQUIRED_HISTORY_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
SAMPLE_CELL_INCHES = (2.3, 2.7)  # per photo in the sample grid: width, height (photo and two caption lines)
SAMPLE_TITLE_INCHES = 0.5
RIGHT_COLOUR = "#1a7f37"
WRONG_COLOUR = "#cf222e"
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"


# --- inputs ----------------------------------------------------------------------------------------


def read_history(model_uri: str) -> list[dict]:
    """The per-epoch metrics training wrote beside the model (history.json)."""
    uri = storage.join(str(model_uri), HISTORY_FILE)
    try:
        raw = storage.read_bytes(uri)
    except (FileNotFoundError, NotADirectoryError, StorageError) as error:
        raise ArtifactError(
            f"'{model_uri}' has no {HISTORY_FILE}, which the report's training curves need; evaluate an artifact written by `animals10 train`."
        ) from error
    try:
        history = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"The training history '{uri}' is not valid JSON ({error}).") from error
    if not isinstance(history, list) or not history or not all(isinstance(row, dict) for row in history):
        raise ArtifactError(f"The training history '{uri}' holds no epochs; it should be a list of per-epoch records.")
    missing = sorted({key for row in history for key in REQUIRED_HISTORY_KEYS if row.get(key) is None})
    if missing:
        raise ArtifactError(
            f"The training history '{uri}' lacks {', '.join(missing)} in some epochs; it cannot be plotted."
        )
    return history


# --- choosing the best model -----------------------------------------------------------------------


def choose_best_model(evaluations: list[ModelEvaluation]) -> tuple[str, str]:
    """(name, reason): the highest macro F1, which weighs every class equally (Animals-10's classes are
    unbalanced), then accuracy, then the lower loss. The reason quotes the numbers that decided it."""

    def key(e: ModelEvaluation):
        loss = e.metrics["loss"]
        # Rounded as the report prints them: a difference that decides is one the reader can see.
        return (
            round(e.metrics["macro_f1"], 3),
            round(e.metrics["accuracy"], 3),
            -round(loss if loss is not None else math.inf, 3),
        )

    ranked = sorted(evaluations, key=key, reverse=True)
    best = ranked[0]
    m = best.metrics
    if len(ranked) == 1:
        return (
            best.name,
            f"Only one model was evaluated: {best.name} (macro F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.1%}).",
        )
    runner = ranked[1]
    r = runner.metrics
    if key(best)[0] != key(runner)[0]:
        decided = f"macro F1 {m['macro_f1']:.3f} against {r['macro_f1']:.3f} for {runner.name}"
    elif key(best)[1] != key(runner)[1]:
        decided = f"macro F1 tied at {m['macro_f1']:.3f}, so accuracy decided: {m['accuracy']:.1%} against {r['accuracy']:.1%} for {runner.name}"
    elif key(best)[2] != key(runner)[2]:
        decided = f"macro F1 and accuracy tied, so the lower loss decided: {_number(m['loss'])} against {_number(r['loss'])} for {runner.name}"
    else:
        decided = (
            f"it ties with {runner.name} on macro F1 ({m['macro_f1']:.3f}), accuracy and loss, and was given first"
        )
    extra = f"accuracy {m['accuracy']:.1%} vs {r['accuracy']:.1%}"
    if m["loss"] is not None and r["loss"] is not None:
        extra += f", loss {m['loss']:.3f} vs {r['loss']:.3f}"
    if m["top3_accuracy"] is not None and r["top3_accuracy"] is not None:
        extra += f", top-3 accuracy {m['top3_accuracy']:.1%} vs {r['top3_accuracy']:.1%}"
    return best.name, (f"The best model is {best.name}: {decided} (macro F1 weighs every class equally; {extra}).")


# --- pictures --------------------------------------------------------------------------------------


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
    accuracy_ax.plot(
        x[kept],
        history[kept]["val_accuracy"],
        "*",
        color="black",
        markersize=12,
        zorder=5,
        label=f"{what}: epoch {x[kept]:.0f}, validation {history[kept]['val_accuracy']:.1%}",
    )
    loss_ax.plot(
        x[kept],
        history[kept]["val_loss"],
        "*",
        color="black",
        markersize=12,
        zorder=5,
        label=f"{what}: epoch {x[kept]:.0f}, validation {history[kept]['val_loss']:.3f}",
    )
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


def _round_robin(candidates: list[int], labels: np.ndarray, count: int) -> list[int]:
    """Up to `count` of `candidates` (already shuffled), taking one class at a time so all classes show;
    classes take turns in the order their first candidate comes, so a short grid is not always the first classes."""
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        by_class.setdefault(int(labels[i]), []).append(i)
    queues = list(by_class.values())
    chosen = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def choose_samples(evaluations: list[ModelEvaluation], count: int, seed: int = 0) -> dict[str, list[int]]:
    """Per model, the indices of the photos to show: the same photos for every model when they were scored
    on the same ones; every class in turn; up to half mistakes (of any model), so that both what works
    and what does not is shown."""

    def pick(y_true: np.ndarray, wrong: np.ndarray) -> list[int]:
        order = np.random.default_rng(seed).permutation(len(y_true)).tolist()
        mistakes = _round_robin([i for i in order if wrong[i]], y_true, count // 2)
        rest = _round_robin([i for i in order if i not in set(mistakes)], y_true, count - len(mistakes))
        return sorted(mistakes + rest, key=lambda i: (int(y_true[i]), i))

    if count <= 0:
        return {e.name: [] for e in evaluations}
    first = evaluations[0]
    if all(e.paths == first.paths and np.array_equal(e.y_true, first.y_true) for e in evaluations):
        wrong_any = np.any([e.y_pred != e.y_true for e in evaluations], axis=0)
        common = pick(first.y_true, wrong_any)
        return {e.name: common for e in evaluations}
    return {e.name: pick(e.y_true, e.y_pred != e.y_true) for e in evaluations}


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


# --- the document ----------------------------------------------------------------------------------


@dataclass
class Image:
    file_name: str
    png: bytes
    caption: str
    alt: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align_right_from: int = 1  # columns from this one hold numbers


@dataclass
class Document:
    """The report as blocks, rendered to Markdown and to HTML alike."""

    title: str
    blocks: list = field(default_factory=list)

    def heading(self, text: str, level: int = 2):
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str):
        self.blocks.append(("paragraph", text))

    def table(self, table: Table):
        self.blocks.append(("table", table))

    def image(self, image: Image):
        self.blocks.append(("image", image))

    @property
    def images(self) -> list[Image]:
        return [block[1] for block in self.blocks if block[0] == "image"]

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[1] + " " + block[2], ""]
            elif kind == "paragraph":
                lines += [block[1], ""]
            elif kind == "table":
                table = block[1]
                cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
                lines.append("| " + " | ".join(cell(h) for h in table.header) + " |")
                lines.append(
                    "|"
                    + "|".join("---" if c < table.align_right_from else "---:" for c in range(len(table.header)))
                    + "|"
                )
                lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
                lines.append("")
            elif kind == "image":
                image = block[1]
                lines += [f"![{image.alt or image.caption}]({image.file_name})", "", f"*{image.caption}*", ""]
        return "\n".join(lines)

    def to_html(self) -> str:
        def inline(text: str) -> str:
            # The one Markdown emphasis the report uses: **bold**.
            return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(str(text)))

        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            "<style>",
            "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;color:#1f2328}",
            "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #d0d7de;padding:4px 10px}",
            "th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}",
            "figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#57606a;font-size:.9em}",
            ".best{background:#dafbe1;border-left:4px solid #1a7f37;padding:.6em 1em}",
            "</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[1]}>{inline(block[2])}</h{block[1]}>")
            elif kind == "paragraph":
                css = (
                    ' class="best"'
                    if block[1].startswith("**The best model") or block[1].startswith("**Only one")
                    else ""
                )
                parts.append(f"<p{css}>{inline(block[1])}</p>")
            elif kind == "table":
                table = block[1]
                parts.append(
                    "<table><thead><tr>"
                    + "".join(f"<th>{inline(h)}</th>" for h in table.header)
                    + "</tr></thead><tbody>"
                )
                for row in table.rows:
                    cells = "".join(
                        f'<td class="num">{inline(v)}</td>' if c >= table.align_right_from else f"<td>{inline(v)}</td>"
                        for c, v in enumerate(row)
                    )
                    parts.append(f"<tr>{cells}</tr>")
                parts.append("</tbody></table>")
            elif kind == "image":
                image = block[1]
                data = base64.b64encode(image.png).decode("ascii")
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(image.alt or image.caption)}">'
                    f"<figcaption>{html.escape(image.caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _file_name(prefix: str, name: str) -> str:
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"


def _bold_best(values: list, formatted: list[str], higher_is_better: bool = True) -> list[str]:
    known = [v for v in values if v is not None]
    if len(values) < 2 or not known:
        return formatted
    target = max(known) if higher_is_better else min(known)
    # Compared as printed, so that two values that read the same are both bold, or neither when all tie.
    best_text = formatted[values.index(target)]
    if all(text == best_text for text in formatted):
        return formatted
    return [f"**{text}**" if text == best_text else text for text in formatted]


def comparison_table(evaluations: list[ModelEvaluation], histories: dict[str, list[dict]]) -> Table:
    """The 'Performance Metrics' table: one row per measure, one column per model; the best value in bold."""
    rows = []

    def metric_row(label, key, format_value, higher_is_better=True):
        values = [e.metrics[key] for e in evaluations]
        rows.append([label, *_bold_best(values, [format_value(v) for v in values], higher_is_better)])

    metric_row("Accuracy", "accuracy", _percent)
    metric_row("Top-3 accuracy", "top3_accuracy", _percent)
    metric_row("Loss (cross-entropy)", "loss", _number, higher_is_better=False)
    for average in ("macro", "weighted"):
        for measure in ("precision", "recall", "f1"):
            metric_row(
                f"{measure.capitalize() if measure != 'f1' else 'F1'} ({average})", f"{average}_{measure}", _number
            )
    trained = [e.card.metrics.get("val_accuracy") if e.card else None for e in evaluations]
    if any(v is not None for v in trained):
        rows.append(["Validation accuracy in training (best epoch)", *[_percent(v) for v in trained]])
    rows.append(["Architecture", *[e.architecture for e in evaluations]])
    rows.append(["Parameters", *[f"{e.num_parameters:,}" if e.num_parameters else "n/a" for e in evaluations]])
    rows.append(["Photos scored", *[f"{e.metrics['num_images']:,}" for e in evaluations]])
    rows.append(["Photos skipped (unreadable)", *[f"{len(e.skipped):,}" for e in evaluations]])
    rows.append(["Epochs trained", *[str(len(histories[e.model_uri])) for e in evaluations]])
    speeds = []
    for e in evaluations:
        values = [row["images_per_second"] for row in histories[e.model_uri] if row.get("images_per_second")]
        speeds.append(f"{np.mean(values):,.0f}" if values else "n/a")
    rows.append(["Training speed (images/s)", *speeds])
    return Table(["Measure", *[e.name for e in evaluations]], rows)


def per_class_table(evaluations: list[ModelEvaluation]) -> Table:
    class_names = evaluations[0].class_names
    header = ["Class", "Support"]
    for e in evaluations:
        prefix = f"{e.name} " if len(evaluations) > 1 else ""
        header += [f"{prefix}precision", f"{prefix}recall", f"{prefix}F1"]
    rows = []
    for name in class_names:
        row = [name, str(evaluations[0].metrics["per_class"][name]["support"])]
        for e in evaluations:
            values = e.metrics["per_class"].get(name, {})
            row += [_number(values.get("precision")), _number(values.get("recall")), _number(values.get("f1"))]
        rows.append(row)
    return Table(header, rows)


@dataclass
class Report:
    """Where the report went, and what it says."""

    output: str
    markdown_uri: str
    html_uri: str
    metrics_uri: str
    image_uris: list[str]
    best_model: str
    best_reason: str
    evaluations: list[ModelEvaluation]


def build_document(
    evaluations: list[ModelEvaluation], histories: dict[str, list[dict]], samples: int = 16
) -> tuple[Document, str, str]:
    """The report's blocks and pictures: (document, best model's name, the reason)."""
    best_name, reason = choose_best_model(evaluations)
    document = Document("Model comparison")
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = sorted({e.source for e in evaluations})
    document.paragraph(
        f"Written {created}. Scored on "
        + "; ".join(sources)
        + "."
        + (
            " Predictions averaged with those of mirrored photos (test-time augmentation)."
            if any(e.tta for e in evaluations)
            else ""
        )
    )
    if len(sources) > 1:
        document.paragraph("The models were scored on different photos, so their numbers are not strictly comparable.")
    document.heading("Best model")
    document.paragraph(f"**{reason}**")

    document.heading("Performance metrics")
    document.table(comparison_table(evaluations, histories))

    same_classes = all(e.class_names == evaluations[0].class_names for e in evaluations)
    if same_classes:
        document.heading("Per-class metrics")
        document.table(per_class_table(evaluations))
        document.image(
            Image(
                "per_class_f1.png",
                figure_png(plot_per_class_f1(evaluations)),
                "F1 per class, all models",
                "F1 per class",
            )
        )
    else:
        document.paragraph("The models know different classes, so there is no per-class comparison.")
        for e in evaluations:
            document.heading(f"Per-class metrics: {e.name}", 3)
            document.table(per_class_table([e]))

    document.heading("Most-confused classes")
    for e in evaluations:
        pairs = e.metrics["most_confused"]
        if not pairs:
            document.paragraph(f"{e.name}: no photo was taken for another class.")
            continue
        document.paragraph(f"{e.name}:")
        document.table(
            Table(
                ["True class", "Predicted as", "Photos", "Share of the true class"],
                [[p["true"], p["predicted"], str(p["count"]), f"{p['share_of_true']:.0%}"] for p in pairs],
                2,
            )
        )

    document.heading("Training curves")
    for e in evaluations:
        kept = e.card.metrics.get("kept_epoch") if e.card else None
        figure = plot_training_curves(histories[e.model_uri], f"{e.name}: training", int(kept) if kept else None)
        document.image(
            Image(
                _file_name("curves", e.name),
                figure_png(figure),
                f"{e.name}: loss and accuracy per epoch, training vs validation; dashed line: phase switch, dotted: learning-rate change, star: the epoch whose weights were kept; right: the learning rate",
                f"{e.name} training curves",
            )
        )

    document.heading("Confusion matrices")
    for e in evaluations:
        figure = plot_confusion_matrix(
            e.metrics["confusion_matrix"], e.class_names, f"{e.name}: accuracy {e.metrics['accuracy']:.1%}"
        )
        document.image(
            Image(
                _file_name("confusion", e.name),
                figure_png(figure),
                f"{e.name}: confusion matrix; each row is a true class, its cells the shares (and counts) of its photos predicted as each class",
                f"{e.name} confusion matrix",
            )
        )

    chosen = choose_samples(evaluations, samples)
    if samples > 0:
        document.heading("Sample predictions")
        for e in evaluations:
            indices = chosen[e.name]
            if not indices:
                continue
            num_wrong = int(sum(e.y_true[i] != e.y_pred[i] for i in indices))
            figure = plot_sample_grid(e, indices, f"{e.name}: {len(indices) - num_wrong} of {len(indices)} right")
            document.image(
                Image(
                    _file_name("samples", e.name),
                    figure_png(figure),
                    f"{e.name}: {len(indices)} sample photos, wrong predictions in red",
                    f"{e.name} sample predictions",
                )
            )

    skipped = [(e.name, path, why) for e in evaluations for path, why in e.skipped]
    if skipped:
        document.heading("Skipped photos")
        document.paragraph(f"{len(skipped)} photo(s) could not be scored and were left out of every number above.")
        document.table(Table(["Model", "Photo", "Why"], [[n, p, w] for n, p, w in skipped[:50]], 3))
    return document, best_name, reason


def render_report(
    evaluations: list[ModelEvaluation], histories: dict[str, list[dict]], output: str, samples: int = 16
) -> Report:
    """Writes report.md, report.html, the PNGs and metrics.json to `output` (local or s3://)."""
    output = str(output)
    document, best_name, reason = build_document(evaluations, histories, samples)
    image_uris = []
    for image in document.images:
        uri = storage.join(output, image.file_name)
        storage.write_bytes(uri, image.png)
        image_uris.append(uri)
    markdown_uri, html_uri, metrics_uri = (
        storage.join(output, name) for name in ("report.md", "report.html", "metrics.json")
    )
    storage.write_bytes(markdown_uri, document.to_markdown().encode())
    storage.write_bytes(html_uri, document.to_html().encode())
    summary = {"best_model": best_name, "reason": reason, "models": [e.to_dict() for e in evaluations]}
    storage.write_bytes(metrics_uri, json.dumps(summary, indent=2).encode())
    logger.info("Report written to %s", html_uri)
    return Report(output, markdown_uri, html_uri, metrics_uri, image_uris, best_name, reason, evaluations)


def write_report(
    model_uris: list[str],
    output: str,
    data: str | None = None,
    *,
    samples: int = 16,
    batch_size: int = 64,
    tta: bool = False,
    device=None,
) -> Report:
    """Scores each model (on its own validation split, or on `data`: a labelled tree or a Parquet output
    with true_label) and writes the comparison report to `output`. Every history is read first, so
    that a missing one fails before any scoring."""
    model_uris = [str(uri) for uri in model_uris]
    for uri in model_uris:
        read_card(uri)  # 'not a model artifact' before 'no history'
    histories = {uri: read_history(uri) for uri in model_uris}
    evaluations = evaluate_models(model_uris, data, batch_size=batch_size, tta=tta, device=device)
    return render_report(evaluations, histories, output, samples)
