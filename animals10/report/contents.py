"""What the report says: the best model and why, the comparison and per-class tables, the sample
photos to show, and the document that puts them together with the pictures."""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np

from animals10.evaluation import ModelEvaluation
from animals10.report.document import Document, Image, Table
from animals10.report.plots import (
    figure_png,
    plot_confusion_matrix,
    plot_coverage_accuracy,
    plot_per_class_f1,
    plot_reliability,
    plot_sample_grid,
    plot_training_curves,
)


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
        decided = (
            f"macro F1 tied at {m['macro_f1']:.3f}, so accuracy decided: {m['accuracy']:.1%} against "
            f"{r['accuracy']:.1%} for {runner.name}"
        )
    elif key(best)[2] != key(runner)[2]:
        decided = (
            f"macro F1 and accuracy tied, so the lower loss decided: {_number(m['loss'])} against "
            f"{_number(r['loss'])} for {runner.name}"
        )
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
    metric_row("Expected calibration error", "ece", _number, higher_is_better=False)
    fitted = [e.card.calibration if e.card else {} for e in evaluations]
    if any(fitted):
        rows.append(["Temperature (fitted on validation)", *[_number(c.get("temperature"), 2) for c in fitted]])
        rows.append(
            [
                "Validation ECE in training, raw → calibrated",
                *[
                    f"{_number(c.get('val_ece'))} → {_number(c.get('val_ece_calibrated'))}" if c else "n/a"
                    for c in fitted
                ],
            ]
        )
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


def open_world_section(document: Document, evaluations: list[ModelEvaluation]) -> None:
    """Photos that are none of the classes: how many each model flags, how well its scores tell them apart
    (with `evaluate --unknown`), which labels they get, and the coverage-accuracy curve."""
    with_world = [e for e in evaluations if e.open_world]
    if not with_world:
        return
    document.heading("Photos that are none of the classes")
    document.paragraph(
        "A photo is flagged unknown when its unknown score is above the threshold chosen on the validation split "
        "at the end of training, which 95% of in-class photos stay under; its label is kept beside the flag."
    )
    rows = [
        [e.name, e.open_world["score"], _number(e.open_world["threshold"], 4), _percent(e.open_world["known_flagged"])]
        + ([_percent(e.open_world["unknown_flagged"])] if "per_score" in e.open_world else ["n/a"])
        for e in with_world
    ]
    document.table(Table(["Model", "Score", "Threshold", "Known photos flagged", "Unknown photos flagged"], rows, 1))
    scored = [e for e in with_world if "per_score" in e.open_world]
    if scored:
        first = scored[0].open_world
        document.paragraph(
            f"Unknown photos: {first['num_unknown']} from {first['unknown_source']}. AUROC: the chance that an unknown "
            "photo scores above a known one (1 is perfect, 0.5 is chance). FPR at 95% TPR: the share of unknown "
            "photos that pass a threshold letting 95% of the known ones through (lower is better)."
        )
        rows = [
            [e.name, name, _number(values["auroc"]), _percent(values["fpr_at_95_tpr"])]
            for e in scored
            for name, values in e.open_world["per_score"].items()
        ]
        document.table(Table(["Model", "Score", "AUROC", "FPR at 95% TPR"], rows, 2))
        names = scored[0].class_names
        document.paragraph("The labels the unknown photos were given (their share of the unknown photos):")
        document.table(
            Table(
                ["Model", *names],
                [[e.name, *[_percent(e.open_world["unknown_labels"][n]) for n in names]] for e in scored],
                1,
            )
        )
    document.image(
        Image(
            "coverage_accuracy.png",
            figure_png(plot_coverage_accuracy(with_world)),
            "Accuracy of the known photos kept as the unknown threshold rises; circle: each model's threshold",
            "coverage-accuracy curves",
        )
    )


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

    document.heading("Calibration")
    document.paragraph(
        "Probabilities are divided by a temperature fitted on the validation split at the end of training "
        "(an artifact without one uses the raw softmax). In a calibrated model, photos given 70% are right "
        "about 70% of the time: the bars follow the diagonal."
    )
    for e in evaluations:
        document.image(
            Image(
                _file_name("reliability", e.name),
                figure_png(plot_reliability(e)),
                f"{e.name}: reliability diagram; share right per confidence bin (darker: more photos), against the "
                "diagonal of perfect calibration",
                f"{e.name} reliability diagram",
            )
        )

    open_world_section(document, evaluations)

    document.heading("Training curves")
    for e in evaluations:
        kept = e.card.metrics.get("kept_epoch") if e.card else None
        figure = plot_training_curves(histories[e.model_uri], f"{e.name}: training", int(kept) if kept else None)
        document.image(
            Image(
                _file_name("curves", e.name),
                figure_png(figure),
                f"{e.name}: loss and accuracy per epoch, training vs validation; dashed line: phase switch, dotted: "
                "learning-rate change, star: the epoch whose weights were kept; right: the learning rate",
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
                f"{e.name}: confusion matrix; each row is a true class, its cells the shares (and counts) of its "
                "photos predicted as each class",
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
