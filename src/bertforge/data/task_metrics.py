"""The torchmetrics collection a task reports (kept apart from the registry in `tasks`, so that
importing the registry does not import torchmetrics)."""

from __future__ import annotations

import warnings
from typing import Any

from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from bertforge.data.tasks import TaskData, metric_postfix


def build_metrics(task: TaskData, prefix: str = "", split: str | None = None) -> MetricCollection:
    """The task's metrics, keyed `prefix + name + metric_postfix(task.name, split)`.

    Update with class indices for classification: preds = logits.argmax(-1), shape (B,), long,
    and target (B,) long. Regression: preds (B,) float, target (B,) float.
    """
    num_labels = task.num_labels

    def make(name: str) -> Any:
        if name == "accuracy":
            return Accuracy(task="multiclass", num_classes=num_labels)
        if name == "f1" and num_labels == 2:
            return F1Score(task="binary")
        if name == "f1":
            return F1Score(task="multiclass", num_classes=num_labels, average="macro")
        if name == "mcc":
            return MatthewsCorrCoef(task="binary")
        return {"pearson": PearsonCorrCoef, "spearman": SpearmanCorrCoef}[name]()

    postfix = metric_postfix(task.name, split) if split else ""
    with warnings.catch_warnings():  # evaluation sets are small: keeping them in memory is fine
        warnings.filterwarnings("ignore", "Metric `SpearmanCorrcoef` will save all targets")
        metrics = {name: make(name) for name in task.spec.metrics}
    return MetricCollection(metrics, prefix=prefix or None, postfix=postfix or None)
