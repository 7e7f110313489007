"""The loss and metric of the SBM node-classification benchmarks (PATTERN, CLUSTER).

As in Dwivedi et al., "Benchmarking Graph Neural Networks", code ``graphdeeplearning/benchmarking-gnns``
(read at commit 1068260d):

* loss, the ``loss`` method of every ``nets/SBMs_node_classification/*_net.py`` (e.g.
  ``graphsage_net.py``): with V the batch's node count and ``count_c`` the batch's nodes of class c,
  ``weight_c = (V - count_c) / V``, zero for a class absent from the batch, then
  ``nn.CrossEntropyLoss(weight=weight)``; its mean reduction divides by the summed weights of the
  targets, ``sum_i w_{y_i} nll_i / sum_i w_{y_i}``. The rarer class weighs more: PATTERN's
  pattern nodes are a minority.
* metric, ``accuracy_SBM`` in ``train/metrics.py``: the per-class accuracy (recall) of every class
  present in the labels, summed, divided by the number of classes in ``confusion_matrix(labels,
  preds)``, i.e. the classes present in the labels *or* the predictions, times 100.
* averaging, ``train/train_SBMs_node_classification.py`` (``evaluate_network_sparse``): the
  reported test accuracy is the *mean over batches* of ``accuracy_SBM`` (test loader batch size =
  the training batch size, 128 for PATTERN at 100k parameters; no shuffling; the last, partial batch
  weighs as much as a full one), not one confusion matrix over the test set.
  :class:`SBMAccuracy` gives both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(labels: torch.Tensor, num_classes: int, n: int | None = None, name: str = "labels") -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name}: expected an int64 tensor of shape (num_nodes,), got {got}; fix: {name}.long()")
    if n is not None and labels.numel() != n:
        raise ValueError(f"{name}: {labels.numel()} labels for {n} rows of predictions; pass one label per "
                         f"real node (a model's logits exclude global nodes)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise ValueError(f"{name}: class {bad} is outside [0, num_classes={num_classes}); map the labels to "
                         f"0..{num_classes - 1} or raise num_classes")


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The benchmark's per-batch class weights ``(V - count_c) / V``, 0 for absent classes (float32)."""
    _check(labels, num_classes)
    count = torch.bincount(labels, minlength=num_classes).float()
    v = float(labels.numel())
    return (v - count) / max(v, 1.0) * (count > 0).float()


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy weighted by :func:`class_weights` of this batch (the benchmark's ``loss``).

    One difference: when a batch holds a single class its weight is 0 and the benchmark's loss
    is 0/0 = NaN; here that batch gets the plain (unweighted) cross-entropy instead.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != num_classes:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected shape (num_nodes, num_classes={num_classes}), got {got}")
    _check(labels, num_classes, logits.shape[0])
    weight = class_weights(labels, num_classes).to(device=logits.device, dtype=logits.dtype)
    if not bool((weight[labels] > 0).any()):
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, weight=weight)


def _predictions(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    if pred.dim() == 2:                   # scores: the argmax (= the benchmark's argmax of the softmax)
        if pred.shape[1] != num_classes:
            raise ValueError(f"pred: scores of shape {tuple(pred.shape)}; expected (num_nodes, {num_classes})")
        return pred.detach().argmax(dim=1)
    _check(pred, num_classes, name="pred")
    return pred.detach()


def _confusion_counts(pred: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(correct per class, count per class, predicted-class counts), int64 on the CPU."""
    labels = labels.detach().cpu()
    pred = _predictions(pred, num_classes).cpu()
    if pred.numel() != labels.numel():
        raise ValueError(f"pred: {pred.numel()} predictions for {labels.numel()} labels")
    correct = torch.bincount(labels[pred == labels], minlength=num_classes)
    return correct, torch.bincount(labels, minlength=num_classes), torch.bincount(pred, minlength=num_classes)


def _accuracy(correct: torch.Tensor, count: torch.Tensor, predicted: torch.Tensor) -> float:
    seen = int(((count > 0) | (predicted > 0)).sum())   # the confusion matrix's classes
    if seen == 0:
        return float("nan")
    recall = correct.double() / count.clamp(min=1).double()   # 0 for a class absent from the labels
    return 100.0 * float(recall.sum()) / seen


def class_weighted_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """The benchmark's ``accuracy_SBM``, in percent: per-class accuracy summed over the classes
    present in ``labels``, divided by the number of classes present in ``labels`` or the predictions.

    ``pred``: scores (num_nodes, num_classes) or predicted classes (num_nodes,). (``accuracy_SBM``
    indexes its confusion matrix by position among the classes seen, which equals the class id only
    when they are 0..K-1; this is the class-indexed meaning, the same whenever they are.)
    """
    _check(labels, num_classes)
    return _accuracy(*_confusion_counts(pred, labels, num_classes))


class SBMAccuracy:
    """Streams :func:`class_weighted_accuracy` over batches.

    :meth:`batch_mean` is the number the benchmark reports (the mean of the per-batch values);
    :meth:`pooled` is the same metric over all nodes seen at once (independent of batching).
    """

    def __init__(self, num_classes: int):
        _check(torch.zeros(0, dtype=torch.int64), num_classes)
        self.num_classes = num_classes
        self.per_batch: list[float] = []
        self._totals = [torch.zeros(num_classes, dtype=torch.int64) for _ in range(3)]

    def update(self, pred: torch.Tensor, labels: torch.Tensor) -> float:
        """Add one batch; returns its accuracy."""
        _check(labels, self.num_classes)
        counts = _confusion_counts(pred, labels, self.num_classes)
        for total, c in zip(self._totals, counts):
            total += c
        self.per_batch.append(_accuracy(*counts))
        return self.per_batch[-1]

    def batch_mean(self) -> float:
        return sum(self.per_batch) / len(self.per_batch) if self.per_batch else float("nan")

    def pooled(self) -> float:
        return _accuracy(*self._totals)


__all__ = ["SBMAccuracy", "class_weighted_accuracy", "class_weights", "weighted_cross_entropy"]
