"""Scoring models: what to score (sets, parquet) and scoring it (scoring). The report that shows the
scores is `animals10.report`; the command is `animals10.cli.evaluate`."""

from animals10.evaluation.scoring import ModelEvaluation, evaluate_model, evaluate_models, evaluation_metrics

__all__ = ["ModelEvaluation", "evaluate_model", "evaluate_models", "evaluation_metrics"]
