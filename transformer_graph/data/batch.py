"""A batch of variable-length (source, target) pairs as flat token nodes plus graphs.

Tokens of all pairs are concatenated, pair by pair, into one node list per side;
no padding exists anywhere. The decoder input of a pair with target ``y`` is
``<sos> y`` and its labels are ``y <eos>``, so a pair contributes
``m = len(y) + 1`` target nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from transformer_graph.graphs.build import AttentionGraphs, GraphSpec, build_graphs


@dataclass
class GraphBatch:
    src: torch.Tensor              # (Ns,) source token ids
    src_pos: torch.Tensor          # (Ns,) position of each source token in its sentence
    tgt: torch.Tensor              # (Nt,) decoder input ids (<sos> y)
    tgt_pos: torch.Tensor          # (Nt,)
    labels: torch.Tensor | None    # (Nt,) next-token targets (y <eos>), None at inference
    src_lens: list[int]
    tgt_lens: list[int]
    graphs: AttentionGraphs

    def __len__(self) -> int:
        return len(self.src_lens)

    @property
    def num_tokens(self) -> int:
        """Source plus target nodes: the unit of the tokens/s figures."""
        return int(self.src.numel() + self.tgt.numel())

    def to(self, device) -> "GraphBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, src=mv(self.src), src_pos=mv(self.src_pos), tgt=mv(self.tgt),
                       tgt_pos=mv(self.tgt_pos), labels=mv(self.labels), graphs=self.graphs.to(device))


def positions(lengths: Sequence[int]) -> torch.Tensor:
    """0..n-1 for each length, concatenated (vectorised, no Python loop over tokens)."""
    lengths_t = torch.as_tensor(list(lengths), dtype=torch.int64)
    starts = torch.cumsum(lengths_t, 0) - lengths_t
    return torch.arange(int(lengths_t.sum())) - starts.repeat_interleave(lengths_t)


def _flat(name: str, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    try:
        return torch.as_tensor([t for s in seqs for t in s], dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: expected sequences of integer token ids ({err})") from None


def make_batch(src_seqs: Sequence[Sequence[int]], tgt_seqs: Sequence[Sequence[int]], *, sos: int,
               eos: int, spec: GraphSpec | None = None, device=None) -> GraphBatch:
    """Build a training batch: ``tgt_seqs`` are target ids without <sos>/<eos>."""
    if len(src_seqs) != len(tgt_seqs):
        raise ValueError(f"src_seqs has {len(src_seqs)} sequences but tgt_seqs has {len(tgt_seqs)}")
    if len(src_seqs) == 0:
        raise ValueError("src_seqs: expected at least one (source, target) pair, got an empty batch")
    for i, s in enumerate(src_seqs):
        if len(s) == 0:
            raise ValueError(f"src_seqs[{i}]: expected a non-empty source sequence, got length 0")
    src_lens = [len(s) for s in src_seqs]
    tgt_lens = [len(t) + 1 for t in tgt_seqs]
    tgt_in = [[sos, *t] for t in tgt_seqs]
    labels = [[*t, eos] for t in tgt_seqs]
    batch = GraphBatch(
        src=_flat("src_seqs", src_seqs), src_pos=positions(src_lens),
        tgt=_flat("tgt_seqs", tgt_in), tgt_pos=positions(tgt_lens), labels=_flat("tgt_seqs", labels),
        src_lens=src_lens, tgt_lens=tgt_lens, graphs=build_graphs(src_lens, tgt_lens, spec),
    )
    return batch if device is None else batch.to(device)
