"""Data-parallel training across processes and machines: torch.distributed launched by torchrun.

``torchrun --nproc_per_node P scripts/train.py --config ...`` starts P copies of
the training script and tells each one who it is through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_from_env` turns that into a process group (gloo on CPU, NCCL on
CUDA), and the :class:`~transformer_graph.train.trainer.Trainer` then

* builds the model from the config seed on every rank (identical weights; DDP
  also broadcasts rank 0's parameters when it wraps the model), reseeds each
  rank's dropout RNG from ``(seed, rank)`` (:func:`seed_rank`) and wraps the
  model in DistributedDataParallel (:func:`wrap_model`);
* reads rank ``r``'s share ``batches[r::P]`` of the epoch's global, length-
  bucketed batch list (the same list on every rank: it depends only on the
  seed and the epoch), trimmed so that every rank gets the same number of
  batches and nobody waits at the epoch's end for a peer that has finished;
* divides each batch's summed loss by ``global target tokens / P``
  (:func:`step_denominators`), so that DDP's gradient *average* is exactly the
  gradient of the mean loss over all ranks' target tokens: P processes with
  batch B take the same step as one process with those P*B examples;
* validates sharded (:func:`sharded_evaluate_loss`, :func:`sharded_decode`):
  every rank scores a slice of the validation set, sums are all-reduced and
  hypotheses gathered, so the metrics are those of a single-process evaluation
  and every rank agrees on ``best`` and ``history``;
* lets only rank 0 write files; the per-rank RNG states are gathered into the
  checkpoint (``rng_ranks``) together with ``world_size``;
* stops every rank after the same step (:meth:`Collectives.agree_to_stop`):
  ``max_time`` follows rank 0's clock, and a SIGTERM/SIGINT on any rank (e.g.
  torchrun forwarding a preemption) makes all of them save ``last.pt`` and stop.

**Resuming with another number of processes.** ``progress.batch_in_epoch``
counts *per-rank* batches; the checkpoint's ``world_size`` converts it to the
global position ``batch_in_epoch * old_world`` (rank ``r``'s ``k``-th batch is
global batch ``k * P + r``, so after ``k`` per-rank batches exactly the first
``k * P`` global batches are consumed). The new run starts at the first per-rank
index whose global batch is not consumed yet: ``ceil(global / new_world)``
(:func:`resume_position`). No batch is trained twice; at most ``new_world - 1``
batches of that one epoch are skipped. The optimizer step counter (and so the
Noam schedule) simply continues. RNG: with the same world size every rank gets
its own saved state back (bit-for-bit continuation); with a different one each
rank reseeds from ``(seed, rank, step)`` (:func:`restore_rank_rng`), which is
deterministic given the config and the checkpoint.

**Failures.** The process group has a bounded timeout (``TG_DIST_TIMEOUT``
seconds, default 300): a peer that died or hangs makes the others' next
collective fail within that time instead of waiting forever, and torchrun then
stops the remaining workers and exits non-zero naming the failed rank.
:func:`worker_guard` prints one clear message (:func:`explain_failure`) and
ends the failing worker with ``os._exit``: after a failed collective the
backend's threads can otherwise block the interpreter's exit, and torchrun
only reacts to workers that have exited.

Multi-node runs need nothing here beyond the environment torchrun sets
(``--nnodes N --rdzv-backend c10d --rdzv-endpoint host:port``); see
``docs/SCALING.md``.
"""
from __future__ import annotations

import math
import os
import random
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from transformer_graph.checkpoint import last_checkpoint_status, set_rng_state
from transformer_graph.data.datasets import Dataset
from transformer_graph.inference.evaluation import decode_dataset, evaluate_loss
from transformer_graph.seeds import derive_seed
from transformer_graph.train.device import resolve_device

ENV_TIMEOUT = "TG_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(ValueError):
    """The distributed environment is wrong, or another training process failed or hung."""


# --------------------------------------------------------------------------
# Setting up and tearing down
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout_s: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env, name: str) -> int:
    text = env[name]
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"environment variable {name}={text!r}: expected an integer "
                               f"(torchrun sets it)") from None


def env_world(env=None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``None`` outside torchrun."""
    env = os.environ if env is None else env
    present = [k for k in _ENV if k in env]
    if not present:
        return None
    if len(present) != len(_ENV):
        missing = [k for k in _ENV if k not in env]
        raise DistributedError(f"environment sets {', '.join(present)} but not {', '.join(missing)}; "
                               f"launch with torchrun, which sets all of {', '.join(_ENV)}")
    rank, world, local = (_env_int(env, k) for k in _ENV)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"environment RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: "
                               f"expected WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return rank, world, local


def dist_timeout(env=None) -> float:
    """Seconds a collective may wait for its peers (``TG_DIST_TIMEOUT``, default 300)."""
    env = os.environ if env is None else env
    text = env.get(ENV_TIMEOUT)
    if text is None or text.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise DistributedError(f"environment variable {ENV_TIMEOUT}={text!r}: expected a positive "
                               f"number of seconds")
    return value


def init_from_env(device: str = "cpu", env=None) -> DistContext | None:
    """Join the process group torchrun describes; ``None`` when there is nothing to join.

    ``device`` is the config's ``train.device`` (cpu|cuda|auto): CUDA means the
    NCCL backend and GPU ``LOCAL_RANK`` of this machine, CPU means gloo. A
    world of one process needs no group and also returns ``None``.
    """
    env = os.environ if env is None else env
    world = env_world(env)
    if world is None or world[1] == 1:
        return None
    rank, world_size, local_rank = world
    timeout = dist_timeout(env)
    if resolve_device(device).type == "cuda":
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise DistributedError(f"LOCAL_RANK={local_rank} but this machine has {n} CUDA device(s); "
                                   f"start at most {n} processes per node (torchrun --nproc_per_node {n})")
        torch.cuda.set_device(local_rank)
        # Make a timed-out NCCL collective abort the process instead of blocking forever.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout))
    return DistContext(rank, world_size, local_rank, backend, timeout)


def shutdown(ctx: DistContext | None, sync: bool = False) -> None:
    """Leave the process group (idempotent; nothing to do outside torchrun).

    ``sync``: first wait for every rank at a barrier, so no rank tears gloo down while a peer
    still has an operation in flight (seen under load: a SIGABRT or a hang in
    ``~ProcessGroupGloo`` of the rank that left last). Only where every rank gets there: after
    a normal end of training, never on a failure path.
    """
    if ctx is not None and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def finish_worker(code: int = 0) -> None:
    """End a torchrun worker that finished its work, skipping the interpreter's finalisation.

    Outside torchrun (a world of one) this returns and the caller exits normally. Under
    torchrun, after :func:`shutdown`, the worker leaves through ``os._exit``: gloo's C++
    threads can still hold tensors whose release needs the GIL, and during finalisation
    that aborts the process ("terminate called without an active exception", SIGABRT),
    which torchrun reports as a failed run after a complete one (seen on torch 2.13 under
    load; pytorch/pytorch#179291). Everything the run keeps (checkpoints, metrics,
    TensorBoard events) is closed by then; only stdout and stderr need flushing.
    """
    world = env_world()
    if world is not None and world[1] > 1:
        _exit_now(code)


def is_comm_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from the communication backend (a dead, hung or unreachable peer)."""
    kinds = tuple(k for k in (getattr(dist, n, None) for n in ("DistError", "DistBackendError")) if k)
    if kinds and isinstance(err, kinds):
        return True
    # gloo reports a dead or silent peer as a plain RuntimeError naming its source file.
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("gloo/", "nccl", "connection closed by peer", "connection reset by peer"))


def explain_failure(err: BaseException, ctx: DistContext, run_dir) -> DistributedError:
    """One clear message for a collective that failed because another process died or hung."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    kept = last_checkpoint_status(run_dir)
    return DistributedError(
        f"rank {ctx.rank} of {ctx.world_size}: lost contact with another training process "
        f"({first[:300]}). Another worker died, raised an error or hung for more than "
        f"{ctx.timeout_s:g} s ({ENV_TIMEOUT}); torchrun's summary names the failed rank. {kept}")


@contextmanager
def worker_guard(ctx: DistContext | None, run_dir, expected: tuple = (ValueError,)) -> Iterator[None]:
    """Under torchrun, end this process at once when the block fails, with one clear message.

    A backend error (dead, hung or unreachable peer) becomes :func:`explain_failure`'s
    message; an ``expected`` error prints as ``error: ...``; anything else prints its
    traceback. The process then leaves through ``os._exit``: after a failed
    collective the backend's threads can block the interpreter's shutdown forever,
    and torchrun only reacts to a worker that has exited. Outside torchrun
    (``ctx`` is None) the block runs unguarded.
    """
    if ctx is None:
        yield
        return
    try:
        yield
    except SystemExit as err:
        if err.code in (0, None):
            raise
        _exit_now(err.code if isinstance(err.code, int) else 1)
    except KeyboardInterrupt:  # a second SIGTERM/SIGINT: the trainer's "stop at once"
        print(f"rank {ctx.rank}: interrupted", file=sys.stderr)
        _exit_now(130)
    except BaseException as err:  # noqa: BLE001 - every failure must end the worker
        if is_comm_failure(err):
            err = explain_failure(err, ctx, run_dir)
        if isinstance(err, expected) or isinstance(err, DistributedError):
            print(f"error: {err}", file=sys.stderr)
            _exit_now(2)
        traceback.print_exc()
        _exit_now(1)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --------------------------------------------------------------------------
# Collectives the training loop needs
# --------------------------------------------------------------------------
class Collectives:
    """Sums, broadcasts and gathers over the process group; identities for one process.

    The training loop calls these unconditionally, so the single-process path
    and the distributed path are the same code.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device=None):
        self.rank, self.world_size = rank, world_size
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            raise DistributedError(f"world_size={world_size} needs an initialised torch.distributed "
                                   f"process group; launch with torchrun (see docs/SCALING.md)")
        if world_size > 1 and dist.get_world_size() != world_size:
            raise DistributedError(f"world_size={world_size} but the process group has "
                                   f"{dist.get_world_size()} processes")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over all ranks (float64: exact for counts below 2**53)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_dict(self, values: dict) -> dict:
        """``values`` with every number summed over ranks; ints stay ints."""
        keys = list(values)
        sums = self.sum([values[k] for k in keys])
        return {k: (round(s) if isinstance(values[k], int) else s) for k, s in zip(keys, sums)}

    def agree_to_stop(self, elapsed: float, stop: bool) -> tuple[float, bool]:
        """``(rank 0's elapsed seconds, whether any rank wants to stop)`` in one all-reduce.

        Ranks must leave the training loop after the same step, or one would wait
        in a collective the others never join: ``max_time`` follows rank 0's clock
        and a SIGTERM/SIGINT seen by any rank stops them all.
        """
        if not self.active:
            return elapsed, stop
        t = torch.tensor([float(elapsed) if self.rank == 0 else 0.0, float(stop)], dtype=torch.float64,
                         device=self.device)
        dist.all_reduce(t)
        return float(t[0].item()), bool(t[1].item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable object) on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


# --------------------------------------------------------------------------
# Model, device, seeds
# --------------------------------------------------------------------------
def seed_rank(seed: int, rank: int, *extra: int) -> int:
    """Seed torch (CPU and CUDA) and ``random`` for this rank's dropout: ranks differ, runs repeat."""
    s = derive_seed(seed, rank, *extra)
    torch.manual_seed(s)
    random.seed(s)
    return s


def local_device(device: torch.device) -> torch.device:
    """The device this rank trains on: its own GPU (set by :func:`init_from_env`) or the CPU."""
    if device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (which must already sit on ``device``).

    DDP broadcasts rank 0's parameters here, so every rank starts identical
    even after a resume. ``broadcast_buffers=False``: the model's only buffer
    is the fixed positional table, re-sending it every forward would be waste.
    """
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None,
                                   broadcast_buffers=False)


# --------------------------------------------------------------------------
# Loss normalisation
# --------------------------------------------------------------------------
def step_denominators(comm: Collectives, token_counts: Sequence[int]) -> list[float]:
    """What to divide each micro-batch's summed loss by on this rank.

    One process minimises ``sum_loss / tokens`` of a batch. With P ranks each
    holding part of the (global) batch and DDP averaging gradients, dividing
    by ``global_tokens / P`` makes the average exactly
    ``sum over ranks of sum_loss / global_tokens``: the single-process
    gradient of the union, whatever the ranks' token counts.
    """
    totals = comm.sum(token_counts)
    if any(t <= 0 for t in totals):
        raise DistributedError(f"a training step has global target-token counts {totals}; expected "
                               f"every batch to hold at least one target token")
    return [t / comm.world_size for t in totals]


# --------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------
def resume_position(batch_in_epoch: int, old_world: int, new_world: int) -> int:
    """Per-rank batch index to continue from, after ``batch_in_epoch`` per-rank batches of
    ``old_world`` ranks: the first global batch not consumed yet, rounded up to a new-rank
    boundary (no batch is repeated; at most ``new_world - 1`` are skipped)."""
    for name, value in (("old_world", old_world), ("new_world", new_world)):
        if not isinstance(value, int) or value < 1:
            raise DistributedError(f"{name}: expected a positive integer, got {value!r}")
    if batch_in_epoch < 0:
        raise DistributedError(f"batch_in_epoch: expected a non-negative integer, got {batch_in_epoch!r}")
    consumed = batch_in_epoch * old_world
    return -(-consumed // new_world)


def restore_rank_rng(ckpt: dict, rank: int, world_size: int, seed: int, step: int) -> str:
    """Restore this rank's random state from ``ckpt``; returns how (for tests and logs).

    Same world size: each rank's own saved state (``rng_ranks``, or ``rng`` for
    one process). Another world size: the saved states do not map onto the new
    ranks, so every rank reseeds from ``(seed, rank, step)``.
    """
    old_world = int(ckpt.get("world_size", 1))
    if old_world == world_size == 1:
        set_rng_state(ckpt["rng"])
        return "restored"
    states = ckpt.get("rng_ranks")
    if old_world == world_size and states is not None and len(states) == world_size:
        set_rng_state(states[rank])
        return "restored"
    seed_rank(seed, rank, step)
    return "reseeded"


# --------------------------------------------------------------------------
# Sharded validation
# --------------------------------------------------------------------------
def shard_indices(lengths: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s examples: every ``world_size``-th of them in length order (balanced work)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return order[rank::world_size]


def sharded_evaluate_loss(comm: Collectives, model, dataset, spec, **kwargs) -> dict:
    """:func:`~transformer_graph.inference.evaluation.evaluate_loss` over all ranks' shares of ``dataset``.

    Each rank scores its share; loss/NLL/correct/token sums are all-reduced and
    turned into the same means a single process computes (a pair's scores do
    not depend on its batch-mates: the graph model has no padding).
    """
    idx = shard_indices([len(s) + len(t) for s, t in dataset.pairs], comm.rank, comm.world_size)
    sums = [0.0, 0.0, 0.0, 0.0]
    if idx:
        part = Dataset([dataset.pairs[i] for i in idx], dataset.src_vocab, dataset.tgt_vocab)
        m = evaluate_loss(model, part, spec, **kwargs)
        n = m["tokens"]
        sums = [m["loss"] * n, m["nll"] * n, round(m["acc"] * n), n]
    loss, nll, correct, tokens = comm.sum(sums)
    tokens = max(round(tokens), 1)
    return {"loss": loss / tokens, "nll": nll / tokens, "ppl": math.exp(min(nll / tokens, 50)),
            "acc": round(correct) / tokens, "tokens": tokens}


def sharded_decode(comm: Collectives, model, src_seqs: Sequence[Sequence[int]], spec, **kwargs) -> list:
    """:func:`~transformer_graph.inference.evaluation.decode_dataset` split over ranks; every rank gets all
    hypotheses, in the order of ``src_seqs``."""
    idx = shard_indices([len(s) for s in src_seqs], comm.rank, comm.world_size)
    hyps = decode_dataset(model, [src_seqs[i] for i in idx], spec, **kwargs) if idx else []
    out: list = [None] * len(src_seqs)
    for part_idx, part_hyps in comm.gather((idx, [list(map(int, h)) for h in hyps])):
        for i, h in zip(part_idx, part_hyps):
            out[i] = h
    return out


def evaluators(comm: Collectives) -> tuple[Callable, Callable]:
    """``(evaluate_loss, decode_dataset)`` as the trainer should call them: sharded over the
    process group when there is one, the plain functions otherwise."""
    if not comm.active:
        return evaluate_loss, decode_dataset
    return partial(sharded_evaluate_loss, comm), partial(sharded_decode, comm)
