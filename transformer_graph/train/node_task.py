"""Node classification as the training loop sees it: the task object of the node tasks.

The :class:`~transformer_graph.train.trainer.Trainer` runs the same loop for every task (run
directory, checkpoints, signals, logs, exact resume, limits, schedule); this is what differs from
the sequence tasks' :class:`~transformer_graph.train.trainer.SequenceTask`:

* data and model: :func:`~transformer_graph.experiment.build_node_experiment` (PATTERN/CLUSTER
  graphs, the karate club or a Planetoid graph) and a
  :class:`~transformer_graph.nn.graph_encoder.GraphEncoder` built for it;
* batches: ``data.batch_size`` graphs each, shuffled every epoch from ``(train.seed, epoch)`` (the
  :class:`~transformer_graph.data.datasets.Batcher` of the sequence tasks, without length buckets),
  so a resumed run reads exactly the batches the interrupted one would have. A transductive task
  (karate, Planetoid: one graph) has one batch per epoch, the whole graph;
* loss: PATTERN/CLUSTER the benchmark's class-weighted cross-entropy of each batch
  (:func:`~transformer_graph.nn.node_loss.weighted_cross_entropy`), karate/Planetoid the plain
  cross-entropy over the training mask; a group of ``optim.accum_steps`` batches averages them;
* metrics: the epoch's mean batch loss, node accuracy and (PATTERN/CLUSTER) the mean over batches of
  the class-weighted accuracy, as the benchmark's ``train_epoch_sparse`` reports them; validation is
  :func:`~transformer_graph.inference.evaluation.evaluate_nodes` with ``score`` = the class-weighted
  accuracy (PATTERN/CLUSTER) or the accuracy on the validation mask (karate/Planetoid).

Checkpoints carry ``graph_data`` (features and classes: the model is rebuilt from it and the config
alone) and a fingerprint of the training graphs, which a resume compares with the data its config
loads. ``src_vocab``/``tgt_vocab`` are None: a node task has no vocabulary, but every training state
has the keys. One process only (the batches are not sharded under torchrun).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from transformer_graph.data.datasets import Batcher
from transformer_graph.experiment import (NodeExperiment, build_graph_model, build_node_experiment, graph_data_info,
                                          graph_fingerprint)
from transformer_graph.inference.evaluation import evaluate_nodes
from transformer_graph.nn.node_loss import class_weighted_accuracy, weighted_cross_entropy
from transformer_graph.train.resume import ResumeError


class NodeTask:
    """The node-classification tasks (pattern, cluster, karate, planetoid) for the Trainer; the methods
    are :class:`~transformer_graph.train.trainer.SequenceTask`'s."""

    rate_key, rate_label = "nodes_per_s", "nodes_s"   # the training speed in the log and the progress bar

    def __init__(self, trainer, ckpt: dict | None):
        self.trainer = trainer
        self.exp: NodeExperiment = build_node_experiment(trainer.cfg)
        self.fingerprint = graph_fingerprint(self.exp.dataset)
        if ckpt is not None:
            self._check_data(ckpt)

    def _check_data(self, ckpt: dict) -> None:
        """A ResumeError when the graphs the config loads now are not those the checkpoint learned from."""
        tr = self.trainer
        saved = (ckpt.get("fingerprint") or {}).get("graphs")
        now = self.fingerprint["graphs"]
        if saved == now:
            return
        if saved is None:
            problem = "it holds no fingerprint of node-task graphs (it was not written for this task)"
        else:
            diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in now
                     if saved.get(k) != now.get(k)]
            problem = "the training graphs differ (" + "; ".join(diffs) + ")"
        raise ResumeError(f"cannot resume {tr.run_dir}: {tr.resumed_from} is of another setup: {problem}. The "
                          f"graphs come from the config (data.task, data.seed, data.graphs_*, data.path); undo the "
                          f"change or start a new run with another --run-dir")

    # -- setup -------------------------------------------------------------------
    def build_model(self):
        return build_graph_model(self.trainer.cfg.model, graph_data_info(self.exp.dataset))

    def make_batcher(self, seed: int) -> Batcher:
        train = self.exp.graphs("train")
        size = len(train) if self.exp.transductive else self.trainer.cfg.data.batch_size
        # (num_nodes, 0) per graph: the batcher's lengths; only batch_size bounds a batch (no buckets).
        return Batcher([(g.num_nodes, 0) for g in train], batch_size=size, shuffle=True, seed=seed, bucket=False)

    def checkpoint_extras(self) -> dict:
        return dict(src_vocab=None, tgt_vocab=None, fingerprint=self.fingerprint,
                    graph_data=graph_data_info(self.exp.dataset))

    def write_run_files(self, run_dir: Path, from_checkpoint: bool) -> None:
        """Nothing beside config.yaml: the graphs come from the config (and the disk cache)."""

    # -- training ----------------------------------------------------------------
    def step_inputs(self) -> tuple:
        """``(train graphs, None)``: :meth:`Trainer.train_step` gets batches of indices into the graphs."""
        return self.exp.graphs("train"), None

    def new_sums(self) -> dict:
        return {"loss": 0.0, "batches": 0, "correct": 0, "labelled": 0, "class_weighted_acc": 0.0, "nodes": 0,
                "graphs": 0}

    def forward_backward(self, train, group, pad, sums) -> float:
        """Gradients of the group's loss: the mean over its batches of each batch's loss."""
        tr, exp = self.trainer, self.exp
        classes = exp.dataset.num_classes
        total = 0.0
        for idx in group:
            batch = exp.batch([train[j] for j in idx], tr.device)
            with tr.autocast():
                out = tr.model(batch)
            logits, labels = exp.labelled(batch, out.float(), "train")
            loss = (weighted_cross_entropy(logits, labels, classes) if exp.weighted
                    else F.cross_entropy(logits, labels))
            tr.check_finite(loss)
            (loss / len(group)).backward()
            value = float(loss.detach())
            total += value
            pred = logits.detach().argmax(1)
            sums["loss"] += value
            sums["batches"] += 1
            sums["correct"] += int((pred == labels).sum())
            sums["labelled"] += labels.numel()
            if exp.weighted:
                sums["class_weighted_acc"] += class_weighted_accuracy(pred, labels, classes)
            sums["nodes"] += batch.num_real
            sums["graphs"] += batch.num_graphs
        return total / max(len(group), 1)

    def epoch_metrics(self, sums: dict, seconds: float) -> dict:
        batches = max(sums["batches"], 1)
        metrics = {"loss": sums["loss"] / batches, "acc": sums["correct"] / max(sums["labelled"], 1)}
        if self.exp.weighted:
            metrics["class_weighted_acc"] = sums["class_weighted_acc"] / batches
        metrics["nodes_per_s"] = sums["nodes"] / max(seconds, 1e-9)
        return metrics

    # -- validation --------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """:func:`evaluate_nodes` on the validation split; ``score`` is the benchmark's metric."""
        tr = self.trainer
        metrics = evaluate_nodes(tr.raw_model, self.exp, "valid", batch_size=tr.cfg.data.batch_size,
                                 device=tr.device)
        if not metrics:
            return {}
        metrics = {k: v for k, v in metrics.items() if k not in ("graphs", "nodes", "batch_size")}
        metrics["score"] = metrics["class_weighted_acc"] if self.exp.weighted else metrics["acc"]
        return metrics
