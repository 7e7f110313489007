"""The training loop: one run directory holds everything needed to evaluate,
resume, plot and compare a run.

``RUN_DIR/`` contains ``config.yaml`` (the effective config), ``vocab.*.json``,
``metrics.jsonl`` (one JSON object per log event), TensorBoard event files,
``last.pt`` (every epoch, every ``train.save_every_steps``/``_minutes`` inside one,
and whenever the run stops) and ``best.pt`` (best validation metric). ``last.pt``
records the position inside the epoch and every random state, so ``--resume RUN_DIR``
continues exactly where the run stopped. What is promised -- fresh or resumed run
directories, checked resumes, uninterruptible saves -- is in docs/RELIABILITY.md.

The loop is the same for every task; what is the task's own -- its data and model, the
batches an epoch is cut into, the loss of a batch, the epoch's training metrics, validation
and what a checkpoint carries besides the training state -- is a task object:
:class:`SequenceTask` (below) for the sequence-to-sequence tasks, and
:class:`~transformer_graph.train.node_task.NodeTask` for node classification.
"""
from __future__ import annotations

import errno
import json
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from transformer_graph.checkpoint import (CheckpointError, fingerprint, last_checkpoint_status, load_checkpoint,
                                          rng_state, save_checkpoint)
from transformer_graph.config import Config, ConfigError, config_to_dict, is_node_task, save_config
from transformer_graph.data.datasets import Batcher, Vocab, check_lengths, collate
from transformer_graph.train.device import resolve_device
from transformer_graph.train.malloc import tune_malloc
from transformer_graph.train.distributed import (Collectives, evaluators, local_device, restore_rank_rng,
                                                 resume_position, seed_rank, step_denominators, wrap_model)
from transformer_graph.data.text import task_detokenize
from transformer_graph.files import atomic_write_bytes
from transformer_graph.inference.evaluation import exact_match, translation_metrics
from transformer_graph.experiment import (SUBWORDS_FILE, Experiment, build_experiment, build_model,
                                          checkpoint_subwords, vocab_paths)
from transformer_graph.nn.loss import label_smoothed_loss_from_logits, token_correct
from transformer_graph.message_passing.base import set_engine
from transformer_graph.message_passing.engines import resolve_engine
from transformer_graph.train import resume as resuming
from transformer_graph.train.node_task import NodeTask
from transformer_graph.train.run_dir import check_fresh, check_writable, create, remove_stale_temp_files
from transformer_graph.train.signals import deferred_signals, stop_requests
from transformer_graph.threads import apply_threads


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the last checkpoint is intact."""


def noam_lambda(d_model: int, factor: float, warmup: int):
    """lr(step) = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step from 1."""
    def lr(step: int) -> float:
        step = max(step, 1)
        return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
    return lr


def constant_lambda(rate: float):
    """lr(step) = rate at every step."""
    def lr(step: int) -> float:
        return rate
    return lr


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    """The learning-rate schedule of ``cfg.optim``: a per-step ``LambdaLR`` (Noam's, or a constant, on
    an optimizer whose base rate is 1), or for 'plateau' torch's ``ReduceLROnPlateau`` on the
    validation loss, stepped once per epoch (:meth:`Trainer.end_epoch`; the optimizer starts at
    optim.lr)."""
    o = cfg.optim
    if o.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=o.plateau_factor,
                                                          patience=o.plateau_patience)
    rate = constant_lambda(o.lr) if o.schedule == "constant" else noam_lambda(cfg.model.d_model, o.factor, o.warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rate)


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint."""

    epoch: int = 0              # current epoch (0-based)
    batch_in_epoch: int = 0     # batches of this epoch already consumed
    step: int = 0               # optimizer steps taken
    elapsed: float = 0.0        # training wall time so far, over all sessions
    best: float | None = None   # best validation metric (higher is better)
    best_epoch: int | None = None
    history: list = field(default_factory=list)
    # Training-metric sums (over all ranks) and seconds of the epoch so far, saved when a run
    # stops mid-epoch so that the resumed epoch still reports its whole-epoch loss and accuracy.
    epoch_sums: dict | None = None


class Trainer:
    """Trains the model a config describes, in ``run_dir``.

    ``rank``/``world_size`` describe a data-parallel process group (see
    :mod:`transformer_graph.train.distributed`); only rank 0 writes files.
    """

    def __init__(self, cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False,
                 rank: int = 0, world_size: int = 1, quiet: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.rank, self.world_size, self.quiet = rank, world_size, quiet
        self.is_main = rank == 0
        t = cfg.train
        node = is_node_task(cfg)
        if node and world_size > 1:  # before any work: the node tasks' batches are not sharded
            raise ConfigError(f"data.task: the node task {cfg.data.task!r} trains in one process, got "
                              f"{world_size} (torchrun); run tg-train without torchrun")
        # train.threads, or (null) the CPUs this process may use that are idle, shared by the ranks
        apply_threads(t.threads, "train.threads", processes=world_size)
        if t.tune_malloc:  # glibc has one allocator per process: set once, before the first large tensor
            tune_malloc()
        self.device = resolve_device(t.device)
        resolve_engine(t.engine, "train.engine")  # an engine that cannot run fails before the data loads
        if world_size > 1:
            self.device = local_device(self.device)  # this rank's GPU under torchrun
        self.comm = Collectives(rank, world_size, self.device)
        self._rng_ranks = None  # every rank's RNG state, gathered before each checkpoint
        self.progress = Progress()
        ckpt = None
        # Fresh or resumed, checked before any work: a new run never writes into a used directory,
        # a resumed one only continues the setup its checkpoint was trained with.
        if resume:
            # (None, None): the run stopped before its first checkpoint and starts over from step 0
            self.resumed_from, ckpt = resuming.load_resume_checkpoint(self.run_dir)
            resuming.check_config(ckpt, self.resumed_from, cfg, self.run_dir)
        else:
            self.resumed_from = None
            if self.is_main:
                check_fresh(self.run_dir)
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        # The task loads its data (checked against the checkpoint's when resuming) and builds the model.
        self.task = (NodeTask if node else SequenceTask)(self, ckpt)
        self.exp = self.task.exp
        # Saved in every checkpoint: what its weights were trained on besides the config.
        self.fingerprint = self.task.fingerprint
        self.model = self.task.build_model().to(self.device)
        # The model itself, unwrapped once: self.model becomes the DDP wrapper under torchrun,
        # while saving, averaging, pictures and model hooks want the module it wraps.
        self.raw_model = self.model
        set_engine(self.model, t.engine, "train.engine")  # this model's engine; no other model changes
        if world_size > 1:  # same initial weights everywhere (seeded above), dropout differs per rank
            seed_rank(t.seed, rank)
        self.optimizer = self._make_optimizer()
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.batcher = self.task.make_batcher(t.seed)  # the same batches for the same (seed, epoch)
        self.train_batches = self.batcher if world_size == 1 else self.batcher.shard(rank, world_size)
        if ckpt is not None:
            self._restore(ckpt)
        if world_size > 1:  # after the restore: DDP broadcasts rank 0's (restored) weights
            self.model = wrap_model(self.model, self.device)
        self._writer = None
        self._signal = None  # set by SIGTERM/SIGINT during fit()
        self._purge_step = self.progress.step + 1 if resume else None  # TensorBoard: drop what is redone
        self.averaged: Path | None = None  # averaged.pt when this session wrote it
        self._saved_at = self.progress.elapsed  # training seconds at the last save of last.pt
        if self.is_main:
            self._prepare_run_dir(resume, from_checkpoint=ckpt is not None)

    def _prepare_run_dir(self, resume: bool, from_checkpoint: bool) -> None:
        """A new run's directory with its config and vocabularies; a resumed run's config (only safe
        keys can differ), its log cut back to the checkpoint and no temporary file of a kill left."""
        with self._writing(self.run_dir):
            if resume:
                check_writable(self.run_dir)
                remove_stale_temp_files(self.run_dir)
                resuming.truncate_log(self.run_dir / "metrics.jsonl", self.progress.step)
            else:
                create(self.run_dir)
                remove_stale_temp_files(self.run_dir)
            save_config(self.cfg, self.run_dir / "config.yaml")
            self.task.write_run_files(self.run_dir, from_checkpoint)

    # -- setup ---------------------------------------------------------------
    def _make_optimizer(self):
        o = self.cfg.optim
        # lr is 1 under a LambdaLR (Noam's or a constant): the schedule supplies the whole learning
        # rate; ReduceLROnPlateau instead scales the rate the optimizer holds.
        cls = torch.optim.AdamW if o.weight_decay > 0 else torch.optim.Adam
        kwargs = {"weight_decay": o.weight_decay} if o.weight_decay > 0 else {}
        lr = o.lr if o.schedule == "plateau" else 1.0
        return cls(self.model.parameters(), lr=lr, betas=tuple(o.betas), eps=o.eps, **kwargs)

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""
        return self.optimizer.param_groups[0]["lr"]

    def _lr_exhausted(self) -> str | None:
        """The stop reason once a 'plateau' schedule has cut the rate below optim.min_lr."""
        o = self.cfg.optim
        if o.schedule == "plateau" and o.min_lr is not None and self.lr < o.min_lr:
            return f"optim.min_lr={o.min_lr:g} (learning rate {self.lr:.3g})"
        return None

    def _restore(self, ckpt: dict) -> None:
        try:  # the resume checks compared config and vocabulary; this is a file damaged inside
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.progress = Progress(**ckpt["progress"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.resumed_from}: its training state does not fit the model its own "
                                  f"config builds ({type(err).__name__}: {str(err).strip().splitlines()[0][:160]})"
                                  ) from None
        # batch_in_epoch counts per-rank batches of the world size the checkpoint was written with.
        p = self.progress
        p.batch_in_epoch = resume_position(p.batch_in_epoch, int(ckpt.get("world_size", 1)), self.world_size)
        restore_rank_rng(ckpt, self.rank, self.world_size, self.cfg.train.seed, p.step)

    @property
    def writer(self):
        if self._writer is None and self.is_main:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (only when the run logs)
            # A resumed run drops the events after its checkpoint: those steps are logged again.
            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._purge_step)
        return self._writer

    # -- bookkeeping -----------------------------------------------------------
    def log(self, event: str, **metrics) -> None:
        if not self.is_main:
            return
        record = {"event": event, "epoch": self.progress.epoch, "step": self.progress.step,
                  "time": round(self.progress.elapsed, 2), **metrics}
        with self._writing(self.run_dir / "metrics.jsonl"), open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{event}/{k}", v, self.progress.step)
        self.writer.flush()

    def checkpoint_state(self) -> dict:
        model = self.raw_model
        return dict(model=model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), rng=rng_state(),
                    progress=vars(self.progress).copy(), config=config_to_dict(self.cfg),
                    **self.task.checkpoint_extras(),   # vocabularies, data fingerprint, ...
                    **({"world_size": self.world_size, "rng_ranks": self._rng_ranks} if self.world_size > 1 else {}))

    def gather_rng(self) -> None:
        """Collect every rank's RNG state for the next checkpoint (a collective: all ranks call it)."""
        if self.world_size > 1:
            self._rng_ranks = self.comm.gather(rng_state())

    def save(self, name: str) -> Path:
        """Write ``RUN_DIR/name`` on rank 0; under torchrun every rank must call it."""
        self.gather_rng()
        if name == "last.pt":
            self._saved_at = self.progress.elapsed
        if self.is_main:
            self.write_checkpoints(self.checkpoint_state(), [name])
        return self.run_dir / name

    def write_checkpoints(self, state: dict, names: list[str]) -> None:
        """Save ``state`` as each of ``names`` in order, as one block no signal interrupts (a Ctrl-C
        waits for its end). A write that fails (a full disk) stops the run with a TrainingError; every
        file keeps its previous content (each write is atomic)."""
        with deferred_signals():
            for name in names:
                with self._writing(self.run_dir / name):
                    save_checkpoint(self.run_dir / name, **state)

    @contextmanager
    def _writing(self, path: Path):
        """An OSError while writing ``path`` becomes a TrainingError that says what is intact."""
        try:
            yield
        except OSError as err:
            code = errno.errorcode.get(err.errno or 0, "")
            raise TrainingError(f"writing {path} failed: {err.strerror or err}{f' ({code})' if code else ''}; "
                                f"stopping; every file of the run keeps its previous content. Fix the cause (e.g. free "
                                f"disk space); {last_checkpoint_status(self.run_dir)}") from None

    # -- the loop --------------------------------------------------------------
    def autocast(self):
        if self.cfg.train.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def check_finite(self, loss: torch.Tensor) -> None:
        """A TrainingError for a NaN or infinite training loss (the step is not taken)."""
        if not torch.isfinite(loss):
            o = self.cfg.optim
            lower = "a smaller optim.lr" if o.schedule == "constant" else "a smaller optim.factor"
            raise TrainingError(
                f"non-finite loss ({float(loss.detach())}) at epoch {self.progress.epoch + 1}, step "
                f"{self.progress.step + 1}; stopping. {last_checkpoint_status(self.run_dir)} "
                f"(try {lower} or "
                f"set optim.clip_grad)")

    def fit(self) -> dict:
        """Train until a limit or a signal; returns the run summary.

        SIGINT/SIGTERM apply to this call alone (:mod:`transformer_graph.train.signals`): the first
        finishes the current step, saves ``last.pt`` and stops; a second stops at once, but never
        in the middle of a save. Before and after it, Ctrl-C interrupts as usual."""
        self._signal = None
        with stop_requests(self._request_stop):
            return self._fit()

    def _request_stop(self, name: str) -> None:
        self._signal = name
        print(f"\n{name} received: stopping after this step and saving last.pt "
              f"(send it again to stop at once)", flush=True)

    def _fit(self) -> dict:
        cfg, p = self.cfg, self.progress
        t, accum = cfg.train, cfg.optim.accum_steps
        start = time.time() - p.elapsed
        self._saved_at = p.elapsed  # this session's clock starts here (train.save_every_minutes)
        stop_reason = None
        train, pad = self.task.step_inputs()  # what train_step reads its batches from

        while p.epoch < t.max_epochs and stop_reason is None:
            stop_reason = self._lr_exhausted()  # checked here too, so a resumed run that stopped for it stays stopped
            if stop_reason:
                break
            batches = self.train_batches.batches(p.epoch)
            self.model.train()
            bar = tqdm(total=len(batches), initial=p.batch_in_epoch, desc=f"epoch {p.epoch + 1}",
                       disable=self.quiet or not self.is_main, leave=False, dynamic_ncols=True)
            sums = self.task.new_sums()  # the epoch's training metrics so far ("nodes": every node processed)
            epoch_start = time.time()
            if p.epoch_sums:  # resumed mid-epoch: count the batches before the stop too
                done = dict(p.epoch_sums)
                epoch_start -= done.pop("seconds", 0.0)
                if self.is_main:  # sums over all ranks: count them once
                    sums.update(done)
                p.epoch_sums = None
            while p.batch_in_epoch < len(batches):
                # One optimizer step over `accum` batches (fewer at the epoch's end).
                group = batches[p.batch_in_epoch:p.batch_in_epoch + accum]
                step_loss = self.train_step(train, group, pad, sums)
                p.batch_in_epoch += len(group)
                p.step += 1
                p.elapsed = time.time() - start
                if self.world_size > 1:  # all ranks stop after the same step: rank 0's clock, any rank's signal
                    p.elapsed, signalled = self.comm.agree_to_stop(p.elapsed, self._signal is not None)
                    if signalled and self._signal is None:
                        self._signal = "on another rank"
                bar.update(len(group))
                rate = sums["nodes"] / max(time.time() - epoch_start, 1e-9)
                bar.set_postfix({"loss": f"{step_loss:.3f}", self.task.rate_label: f"{rate:.0f}",
                                 "lr": f"{self.lr:.2e}"})
                if p.step % t.log_every == 0:
                    self.log("train_step", loss=step_loss, lr=self.lr,
                             **{self.task.rate_key: rate})
                if self._signal is not None:
                    stop_reason = f"signal {self._signal}"
                elif t.max_steps is not None and p.step >= t.max_steps:
                    stop_reason = f"max_steps={t.max_steps}"
                elif t.max_time is not None and p.elapsed >= t.max_time:
                    stop_reason = f"max_time={t.max_time}s"
                if stop_reason:
                    break
                if p.batch_in_epoch < len(batches) and self._step_save_due():  # (an epoch's end saves anyway)
                    p.epoch_sums = {**self.comm.sum_dict(sums), "seconds": time.time() - epoch_start}
                    self.save("last.pt")
                    p.epoch_sums = None
            bar.close()
            sums = self.comm.sum_dict(sums)  # the epoch's training metrics over all ranks
            train_metrics = self.task.epoch_metrics(sums, time.time() - epoch_start)
            if p.batch_in_epoch >= len(batches):  # the epoch is complete
                self.end_epoch(train_metrics)
            else:
                p.epoch_sums = {**sums, "seconds": time.time() - epoch_start}
                self.save("last.pt")
        p.elapsed = time.time() - start
        return self.summary(stop_reason or f"max_epochs={t.max_epochs}")

    def _step_save_due(self) -> bool:
        """Whether to write last.pt after this step inside an epoch (train.save_every_steps/_minutes).

        Decided on the step count and the training clock, which under torchrun is rank 0's on every
        rank (agree_to_stop), so all ranks save together."""
        t, p = self.cfg.train, self.progress
        return ((t.save_every_steps is not None and p.step % t.save_every_steps == 0)
                or (t.save_every_minutes is not None and p.elapsed - self._saved_at >= 60 * t.save_every_minutes))

    def train_step(self, train, group, pad, sums) -> float:
        """Forward/backward over the batches of ``group`` (the task's loss, added into ``sums``), then one
        optimizer step; returns the step's training loss."""
        o = self.cfg.optim
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = self.task.forward_backward(train, group, pad, sums)
        if o.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_grad)
        self.optimizer.step()
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):  # that one: per epoch
            self.scheduler.step()
        return step_loss

    # -- epoch end -------------------------------------------------------------
    def validate(self) -> dict:
        """Validation metrics (the task's); ``score`` is what best.pt is chosen by (higher is better)."""
        return self.task.validate()

    def end_epoch(self, train_metrics: dict) -> None:
        p = self.progress
        valid = self.validate()  # all ranks take part (sharded under torchrun) and get the same metrics
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and "loss" in valid:
            self.scheduler.step(valid["loss"])  # the same loss on every rank: the same cuts
        self.log("epoch", **{f"train_{k}": v for k, v in train_metrics.items()},
                 **{f"valid_{k}": v for k, v in valid.items()})
        pop_act = getattr(self.raw_model, "pop_act_stats", None)
        if pop_act is not None:  # Universal Transformer: fraction of nodes entering each step this epoch
            self.log("act", **pop_act())
        p.history.append({"epoch": p.epoch + 1, "step": p.step, "time": round(p.elapsed, 1),
                          **{f"train_{k}": v for k, v in train_metrics.items()},
                          **{f"valid_{k}": v for k, v in valid.items()}})
        if self.is_main and not self.quiet:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in p.history[-1].items() if isinstance(v, float))
            print(f"epoch {p.epoch + 1}: {shown}", flush=True)
        improved = "score" in valid and (p.best is None or valid["score"] > p.best)
        if improved:
            p.best, p.best_epoch = valid["score"], p.epoch + 1
        p.epoch += 1
        p.batch_in_epoch = 0
        if self.is_main and self.cfg.viz.example is not None:
            # Attention of the chosen example, for scripts/visualize.py --animate (no RNG used); before
            # the checkpoint, so a kill in between redoes this epoch rather than skipping its picture.
            from transformer_graph.viz.attention import save_snapshot  # noqa: PLC0415  (matplotlib: viz runs only)
            save_snapshot(self.raw_model, self.exp, self.cfg.viz, self.run_dir, p.epoch)
        self.gather_rng()
        self._saved_at = p.elapsed
        if self.is_main:
            keep = max(self.cfg.train.keep_last, self.cfg.train.average_last)
            # last.pt last: a kill before it resumes from the previous one and redoes this epoch,
            # which writes the same best.pt and epoch file again.
            names = (["best.pt"] if improved or not valid else []) + ([f"epoch{p.epoch}.pt"] if keep > 1 else [])
            self.write_checkpoints(self.checkpoint_state(), [*names, "last.pt"])
            old = self.run_dir / f"epoch{p.epoch - keep}.pt"
            if keep > 1 and old.exists():
                old.unlink()

    def summary(self, stop_reason: str) -> dict:
        p = self.progress
        if self.is_main and self.cfg.train.average_last > 1:
            self.average_checkpoints(self.cfg.train.average_last)
        summary = {"run_dir": str(self.run_dir), "stopped_by": stop_reason, "epochs": p.epoch,
                   "steps": p.step, "train_time_s": round(p.elapsed, 1), "best_epoch": p.best_epoch,
                   "last": p.history[-1] if p.history else None}
        if self.is_main:
            self.log("summary", **{k: v for k, v in summary.items() if k != "last"})
            if self._writer is not None:
                self._writer.close()
        return summary

    def average_checkpoints(self, n: int) -> Path | None:
        """Average the parameters of the last ``n`` epoch checkpoints into ``averaged.pt``."""
        paths = [self.run_dir / f"epoch{e}.pt" for e in range(self.progress.epoch - n + 1, self.progress.epoch + 1)]
        paths = [q for q in paths if q.exists()]
        if len(paths) < 2:
            return None
        states = [load_checkpoint(q)["model"] for q in paths]
        # Tied weights (shared embeddings, generator) appear under several keys of one
        # storage: average each storage once and keep the sharing, so the file is no bigger.
        ref = self.raw_model.state_dict()
        by_storage: dict = {}
        avg = {}
        for k, t in states[0].items():
            if not t.is_floating_point():
                avg[k] = t
                continue
            ptr = ref[k].untyped_storage().data_ptr() if k in ref else id(t)
            if ptr not in by_storage:
                by_storage[ptr] = sum(s[k].double() for s in states).div(len(states)).to(t.dtype)
            avg[k] = by_storage[ptr]
        state = self.checkpoint_state()
        state["model"] = avg
        state["averaged_from"] = [q.name for q in paths]
        self.write_checkpoints(state, ["averaged.pt"])
        self.averaged = self.run_dir / "averaged.pt"
        return self.averaged

    def final_checkpoint(self) -> Path | None:
        """The model this run is judged by: the average this session wrote, else best.pt (an
        averaged.pt left by an earlier session of a resumed run is not this run's final model)."""
        best = self.run_dir / "best.pt"
        return self.averaged or (best if best.exists() else None)


def format_summary(summary: dict) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = ["", "=" * 60, f"run finished ({summary['stopped_by']})",
             f"  epochs {summary['epochs']}, steps {summary['steps']}, "
             f"training time {summary['train_time_s']:.0f} s",
             f"  best epoch: {summary['best_epoch']}"]
    last = summary.get("last") or {}
    for k, v in last.items():
        if k.startswith("valid_") or k in ("train_loss", "train_acc", "train_tokens_per_s", "train_class_weighted_acc",
                                           "train_nodes_per_s"):
            lines.append(f"  {k:<22} {v:.4f}" if isinstance(v, float) else f"  {k:<22} {v}")
    if "test" in summary:
        for k, v in summary["test"].items():
            lines.append(f"  test_{k:<17} {v:.4f}" if isinstance(v, float) else f"  test_{k:<17} {v}")
    rd = summary["run_dir"]
    lines += [f"  run directory: {rd}", f"    {rd}/best.pt, {rd}/last.pt, {rd}/metrics.jsonl, {rd}/tb/",
              "=" * 60]
    return "\n".join(lines)


class SequenceTask:
    """The sequence-to-sequence tasks (copy, sort, parallel text, Multi30k) as the training loop sees them.

    A task object holds what the loop does not: the data and the model (``exp``, :meth:`build_model`),
    what every checkpoint carries besides the training state (:meth:`checkpoint_extras`) and the run
    directory besides its config (:meth:`write_run_files`), the batches of an epoch
    (:meth:`make_batcher`: lists of example indices, the same for the same seed and epoch), one step's
    forward/backward (:meth:`forward_backward`, which adds into the epoch's ``sums``), the epoch's
    training metrics (:meth:`epoch_metrics`) and validation (:meth:`validate`, with ``score``).
    :class:`~transformer_graph.train.node_task.NodeTask` is the other one.
    """

    rate_key, rate_label = "tokens_per_s", "tok_s"   # the training speed in the log and the progress bar

    def __init__(self, trainer: Trainer, ckpt: dict | None):
        self.trainer = trainer
        cfg = trainer.cfg
        vocabs, subwords = None, None
        if ckpt is not None:  # the checkpoint's vocabularies and subword model, not new ones
            vocabs = (Vocab.from_dict(ckpt["src_vocab"]), Vocab.from_dict(ckpt["tgt_vocab"]))
            if ckpt["src_vocab"] == ckpt["tgt_vocab"]:
                vocabs = (vocabs[0], vocabs[0])
            subwords = checkpoint_subwords(ckpt, cfg, vocabs, trainer.resumed_from)
        self.exp: Experiment = build_experiment(cfg, vocabs, subwords)
        if ckpt is not None:
            resuming.check_data(ckpt, trainer.resumed_from, self.exp, trainer.run_dir)
        check_lengths(self.exp.tokens, cfg.model.max_len)  # every split: fail now, not after an epoch
        self.fingerprint = fingerprint(self.exp.src_vocab.to_dict(), self.exp.tgt_vocab.to_dict(),
                                       self.exp.tokens["train"])
        if cfg.viz.example is not None:  # fail now, not after the first epoch
            from transformer_graph.viz.attention import check_example  # noqa: PLC0415  (matplotlib: viz runs only)
            check_example(self.exp, cfg.viz.example, "valid")

    # -- setup -------------------------------------------------------------------
    def build_model(self):
        return build_model(self.trainer.cfg.model, len(self.exp.src_vocab), len(self.exp.tgt_vocab))

    def make_batcher(self, seed: int) -> Batcher:
        d = self.trainer.cfg.data
        return Batcher(self.exp.splits["train"].lengths, batch_size=None if d.max_tokens else d.batch_size,
                       max_tokens=d.max_tokens, shuffle=True, seed=seed, bucket=d.bucket)

    def checkpoint_extras(self) -> dict:
        exp = self.exp
        return dict(src_vocab=exp.src_vocab.to_dict(), tgt_vocab=exp.tgt_vocab.to_dict(),
                    fingerprint=self.fingerprint,
                    **({"subwords": exp.text.subwords.tensor()} if exp.text.subwords is not None else {}))

    def write_run_files(self, run_dir: Path, from_checkpoint: bool) -> None:
        """The vocabularies (and subword model) beside config.yaml."""
        for vocab, path in zip((self.exp.src_vocab, self.exp.tgt_vocab), vocab_paths(run_dir)):
            if not from_checkpoint or not path.exists():  # else the checkpoint's vocabulary: unchanged
                vocab.save(path)
        subwords = self.exp.text.subwords
        if subwords is not None and not (from_checkpoint and (run_dir / SUBWORDS_FILE).exists()):
            # the model as a file too: spm_encode and other tools read it directly
            atomic_write_bytes(run_dir / SUBWORDS_FILE, subwords.proto)

    # -- training ----------------------------------------------------------------
    def step_inputs(self) -> tuple:
        """``(train, pad)``, the data arguments of :meth:`Trainer.train_step`."""
        return self.exp.splits["train"], self.exp.tgt_vocab.pad

    def new_sums(self) -> dict:
        return {"loss": 0.0, "nll": 0.0, "correct": 0, "tokens": 0, "nodes": 0}

    def forward_backward(self, train, group, pad, sums) -> float:
        """Gradients of the group's loss (the mean over its batches of each batch's per-token loss)."""
        tr = self.trainer
        o = tr.cfg.optim
        total_loss, total_tokens = 0.0, 0
        # Under DDP each batch's loss sum is divided by (global target tokens / world size): DDP's
        # gradient average is then exactly the single-process gradient over all ranks' tokens.
        denoms = (step_denominators(tr.comm, [sum(len(train.pairs[j][1]) + 1 for j in idx) for idx in group])
                  if tr.world_size > 1 else None)
        for i, idx in enumerate(group):
            batch = collate(train, idx, self.exp.spec, tr.device)
            sync = i == len(group) - 1
            ctx = tr.model.no_sync() if (not sync and hasattr(tr.model, "no_sync")) else nullcontext()
            with ctx:
                with tr.autocast():
                    # Logits, not log-probabilities: the fused loss does the log-softmax itself,
                    # without a second (nodes x vocabulary) tensor or, under bf16, any cast of one.
                    logits = tr.model(batch, logits=True)
                loss_sum, nll_sum = label_smoothed_loss_from_logits(logits, batch.labels, o.label_smoothing, pad)
                correct = token_correct(logits.detach(), batch.labels)   # argmax(logits) = argmax(logp)
                del logits   # the loss keeps what backward needs; the logits need not live through it
                ntok = batch.labels.numel()
                loss = loss_sum / ntok
                tr.check_finite(loss)
                main = loss if denoms is None else loss_sum / denoms[i]
                # A loss term the model computes in its forward pass (the Universal Transformer's
                # weighted ACT ponder cost, see transformer_graph.nn.universal); None for others.
                aux = getattr(tr.raw_model, "aux_loss", None)
                ((main if aux is None else main + aux) / len(group)).backward()
            loss_value = float(loss_sum.detach())   # (float() of a tensor needing grad warns in torch 2.13)
            total_loss += loss_value
            total_tokens += ntok
            sums["loss"] += loss_value
            sums["nll"] += float(nll_sum)
            sums["correct"] += correct
            sums["tokens"] += ntok
            sums["nodes"] += batch.num_tokens
        return total_loss / max(total_tokens, 1)

    def epoch_metrics(self, sums: dict, seconds: float) -> dict:
        n = max(sums["tokens"], 1)
        return {"loss": sums["loss"] / n, "acc": sums["correct"] / n,
                "tokens_per_s": sums["nodes"] / max(seconds, 1e-9)}

    # -- validation --------------------------------------------------------------
    def validate(self) -> dict:
        """Teacher-forced loss and accuracy, plus BLEU (translation, ``eval.bleu``) or exact match."""
        tr = self.trainer
        cfg, exp = tr.cfg, self.exp   # tr.cfg: read now (a caller may switch the eval section)
        model = tr.raw_model
        valid = exp.splits["valid"]
        if len(valid) == 0:
            return {}
        d = cfg.data
        # Under torchrun every rank scores a share and the sums are all-reduced: single-process metrics.
        evaluate, decode = evaluators(tr.comm)
        metrics = evaluate(model, valid, exp.spec, batch_size=None if d.max_tokens else d.batch_size,
                           max_tokens=d.max_tokens, device=tr.device, eps=cfg.optim.label_smoothing)
        metrics["score"] = -metrics["nll"]
        limit = cfg.eval.max_valid_sentences or len(valid)
        pairs = valid.pairs[:limit]
        v = exp.tgt_vocab
        if exp.translation and cfg.eval.bleu:
            hyps = decode(model, [s for s, _ in pairs], exp.spec, sos=v.sos, eos=v.eos,
                          max_len_a=cfg.eval.max_len_a, max_len_b=cfg.eval.max_len_b)
            text = exp.text
            refs = [text.words(t) for _, t in exp.tokens["valid"][:limit]]
            words = [text.words(v.decode(h)) for h in hyps]
            # sacreBLEU/chrF here score against the detokenised references (tg-evaluate uses the raw files)
            full = translation_metrics(words, refs, [task_detokenize(cfg.data, w) for w in words],
                                       [task_detokenize(cfg.data, r) for r in refs])
            metrics.update(bleu=full["bleu_tok"], bleu_lc=full["bleu_tok_lc"], sacrebleu=full["sacrebleu"],
                           chrf=full["chrf"])
            metrics["score"] = metrics["bleu"]
        elif not exp.translation and cfg.eval.exact_match:
            hyps = decode(model, [s for s, _ in pairs], exp.spec, sos=v.sos, eos=v.eos,
                          max_len_a=cfg.eval.max_len_a, max_len_b=cfg.eval.max_len_b)
            metrics["exact_match"] = exact_match(hyps, [t for _, t in pairs])
            metrics["score"] = metrics["acc"] + metrics["exact_match"]
        return tr.comm.broadcast(metrics)  # rank 0's numbers decide `best` on every rank
