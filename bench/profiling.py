"""Where time and memory go: peak tensor memory of a call, and the profiler's top ops.

Peak memory on CPU. ``resource.getrusage`` and ``VmHWM`` see the whole process
and glibc's allocator keeps freed memory mapped (so a step that reuses memory a
previous one freed shows no growth), and ``tracemalloc`` sees only Python
objects. PyTorch's profiler, with ``profile_memory=True``, records an event for
every allocation and free of PyTorch's CPU (and CUDA) allocator, with its size.
Summing those events in time order gives the bytes of live tensors at every
moment; :func:`peak_memory` reports the highest value reached during the call,
above what was live when it started. That counts every tensor of both the
graph and the dense model (DGL's PyTorch backend allocates its kernels' outputs
as PyTorch tensors), independent of allocator caching, in one process.

What it does not see: memory allocated before the call or outside PyTorch. For the
graph model that is the attention graphs' index arrays, built with the batch (COO and
CSR row pointers, int64) and, on the dgl engine, DGL's own formats of them (COO/CSR/CSC,
int32), which :func:`graph_index_bytes` counts exactly.
On CUDA, ``torch.cuda.max_memory_allocated`` is the same measure and is used
instead.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Kineto (the profiler's backend) prints "STAGE: Completed Stage ..." lines for every
# profile unless told otherwise; it reads this once, when first used.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from transformer_graph.message_passing import csr  # noqa: E402


@dataclass
class MemoryPeak:
    peak_bytes: int        # highest live tensor bytes during the call, above the start
    end_bytes: int         # live bytes at the end, above the start (e.g. new optimizer state)
    method: str            # how it was measured


def _quiet_profile(**kwargs):
    # Kineto prints "STAGE:..." lines and torch warns about an empty trace on CPU;
    # neither is useful inside a benchmark.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return profile(**kwargs)


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, MemoryPeak]:
    """Run ``fn()`` once and return (its result, the peak tensor memory it needed)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, MemoryPeak(torch.cuda.max_memory_allocated(device) - start,
                               torch.cuda.memory_allocated(device) - start,
                               "torch.cuda.max_memory_allocated")
    with _quiet_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    # Python's sort is stable: events of the same instant keep their recorded order. torch 2.2's
    # events have start_us(), newer releases' only start_ns().
    events.sort(key=(lambda e: e.start_ns()) if events and hasattr(events[0], "start_ns") else (lambda e: e.start_us()))
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return out, MemoryPeak(peak, live, "torch.profiler allocation events (profile_memory=True)")


_FORMAT_ARRAYS = {
    # DGL format -> index entries it stores, as a function of (edges, src nodes, dst nodes)
    "coo": lambda e, ns, nd: 2 * e,
    "csr": lambda e, ns, nd: (ns + 1) + 2 * e,     # indptr, indices, edge ids
    "csc": lambda e, ns, nd: (nd + 1) + 2 * e,
}


def dgl_format_bytes(view) -> int:
    """Bytes of the sparse formats a DGL graph has materialised (DGL's own allocations)."""
    created = view.formats()["created"]
    e, ns, nd = view.num_edges(), view.num_src_nodes(), view.num_dst_nodes()
    itemsize = 4 if view.idtype == torch.int32 else 8
    return sum(_FORMAT_ARRAYS[f](e, ns, nd) * itemsize for f in created)


def graph_index_bytes(graph) -> int:
    """Bytes of an :class:`~transformer_graph.graphs.graph.AttentionGraph`'s structure that the
    tensor peak of a step on it does not see: its own index arrays (COO and the CSR row
    pointers, built with the batch, before the step) and the formats of its DGL view when the
    dgl engine made one (DGL allocations). Cached CSR patterns are left out: they are PyTorch
    tensors, built inside a step once forgotten (``csr.forget_patterns``), and counted there."""
    own = graph.index_bytes() - csr.pattern_bytes(graph)   # index_bytes() includes the patterns
    view = graph.derived.get("dgl")
    return own + (dgl_format_bytes(view) if view is not None else 0)


@dataclass
class OpShare:
    name: str
    self_ms: float        # time spent in the op itself (not its children), in ms per call of fn
    share: float          # fraction of the total self time
    calls: int


def top_ops(fn: Callable[[], Any], n: int = 15, repeats: int = 1,
            category: Callable[[str, list[str]], str] | None = None):
    """Profile ``repeats`` calls of ``fn``: the ``n`` ops with the most self CPU time,
    the total self time per call in ms (what the shares are fractions of), and, when
    ``category(name, ancestor_names)`` is given, the share of each category.

    Categories see every op's enclosing ops, so the matrix products inside an
    attention kernel can be counted as attention rather than as matrix products.
    """
    with _quiet_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    rows = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in rows)
    rows.sort(key=lambda e: -e.self_cpu_time_total)
    ops = [OpShare(e.key, e.self_cpu_time_total / 1e3 / repeats, e.self_cpu_time_total / max(total, 1),
                   int(e.count // repeats)) for e in rows[:n]]
    shares: dict[str, float] = {}
    if category is not None:
        events = [e for e in prof.events() if e.self_cpu_time_total > 0]
        event_total = max(sum(e.self_cpu_time_total for e in events), 1)
        for e in events:
            ancestors, parent = [], e.cpu_parent
            while parent is not None:
                ancestors.append(parent.name)
                parent = parent.cpu_parent
            c = category(e.name, ancestors)
            shares[c] = shares.get(c, 0.0) + e.self_cpu_time_total / event_total
    return ops, total / 1e3 / repeats, dict(sorted(shares.items(), key=lambda kv: -kv[1]))
