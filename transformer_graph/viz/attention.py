"""Attention pictures: what each head of each layer attends to, as heatmaps,
bipartite drawings and per-epoch animations.

The model's attention lives on the edges of the three attention graphs (see
:mod:`transformer_graph.graphs.build`): ``forward(batch, return_attention=True)``
gives one (num_edges, heads) weight tensor per layer and kind, in the edge
order of the batch graph. For one (source, target) pair this module scatters
those edge weights into dense (query x key) matrices:

==========  ============================  ==============================
kind        rows (queries)                columns (keys)
==========  ============================  ==============================
``enc``     source tokens                 source tokens
``dec``     target nodes ``<sos> y``      target nodes ``<sos> y``
``cross``   target nodes ``<sos> y``      source tokens
==========  ============================  ==============================

Target node i is fed ``<sos> y_1 .. y_m`` (teacher forcing) and predicts
``y_1 .. y_m <eos>``; rows are labelled with what the node is fed. A pair of
nodes with no edge between them (future positions, sparse structures) gets
weight 0 and is marked absent in :attr:`AttentionMaps.edges`, which the
heatmaps draw in grey.

Training snapshots: with ``viz.example`` set, :class:`~transformer_graph.train.trainer.Trainer`
calls :func:`save_snapshot` after every epoch, writing
``RUN_DIR/attention/epoch{N}.pt`` (plain tensors and token lists, loadable
with ``weights_only=True``); :func:`write_animation` turns them into a GIF.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence

import torch

from transformer_graph.config import is_node_task, load_config
from transformer_graph.data.batch import make_batch
from transformer_graph.data.datasets import Vocab
from transformer_graph.data.text import TextPipeline
from transformer_graph.files import atomic_torch_save
from transformer_graph.graphs.build import KINDS, GraphSpec
from transformer_graph.inference.decoding import greedy
from transformer_graph.viz import figures as plots

KIND_NAMES = {"enc": "encoder self-attention", "dec": "decoder self-attention",
              "cross": "encoder-decoder attention",
              "node": "self-attention on the graph"}   # a node classifier's one kind (viz/node_attention.py)
AXIS_NAMES = {"enc": ("source (query)", "source (key)"), "dec": ("target (query)", "target (key)"),
              "cross": ("target (query)", "source (key)")}
SNAPSHOT_FORMAT = "transformer_graph/attention/1"
SNAPSHOT_DIR = "attention"
_SNAPSHOT_NAME = re.compile(r"epoch(\d+)\.pt")


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """Dense attention of one (source, target) pair, every layer and head of every kind.

    ``weights[kind]`` is (layers, heads, queries, keys); ``edges[kind]`` is a
    bool (queries, keys) matrix of which edges exist in the attention graph.
    Kinds whose blocks report no weights are absent from both dicts.
    """

    src_tokens: list[str]
    tgt_tokens: list[str]        # what each target node is fed: <sos> y_1 .. y_m
    tgt_out_tokens: list[str]    # what each target node predicts: y_1 .. y_m <eos>
    weights: dict[str, torch.Tensor]
    edges: dict[str, torch.Tensor]

    def labels(self, kind: str) -> tuple[list[str], list[str]]:
        """(row labels, column labels) of ``kind``'s matrices."""
        _check_kind(kind)
        return {"enc": (self.src_tokens, self.src_tokens), "dec": (self.tgt_tokens, self.tgt_tokens),
                "cross": (self.tgt_tokens, self.src_tokens)}[kind]

    def num_layers(self, kind: str) -> int:
        return int(self._get(kind).shape[0])

    def num_heads(self, kind: str) -> int:
        return int(self._get(kind).shape[1])

    def _get(self, kind: str) -> torch.Tensor:
        _check_kind(kind)
        if kind not in self.weights:
            raise ValueError(f"kind: this model reports no attention weights for {kind!r} "
                             f"(available: {sorted(self.weights) or 'none'})")
        return self.weights[kind]

    def check_layer(self, kind: str, layer: int) -> int:
        n = self.num_layers(kind)
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
            raise ValueError(f"layer: {layer!r} does not exist for {KIND_NAMES[kind]}; the model has {n} "
                             f"{'encoder' if kind == 'enc' else 'decoder'} layer(s), expected 0..{n - 1}")
        return layer

    def check_head(self, kind: str, head: int) -> int:
        n = self.num_heads(kind)
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < n:
            raise ValueError(f"head: {head!r} does not exist; the model has {n} head(s), expected 0..{n - 1}")
        return head

    def matrix(self, kind: str, layer: int, head: int) -> torch.Tensor:
        """(queries, keys) weights of one head of one layer."""
        return self._get(kind)[self.check_layer(kind, layer), self.check_head(kind, head)]

    def to_dict(self) -> dict:
        """Plain tensors, lists and strings (``torch.load(weights_only=True)`` reads it)."""
        return {"src_tokens": list(self.src_tokens), "tgt_tokens": list(self.tgt_tokens),
                "tgt_out_tokens": list(self.tgt_out_tokens),
                "weights": {k: v.cpu() for k, v in self.weights.items()},
                "edges": {k: v.cpu() for k, v in self.edges.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> AttentionMaps:
        return cls(list(d["src_tokens"]), list(d["tgt_tokens"]), list(d["tgt_out_tokens"]),
                   dict(d["weights"]), dict(d["edges"]))


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The block runs ``model`` in eval mode (no dropout, no sign flips); its mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: unknown attention kind {kind!r}; expected one of {', '.join(KINDS)}")


def _labels(vocab, ids: Sequence[int]) -> list[str]:
    if vocab is None:
        return [str(int(i)) for i in ids]
    return vocab.decode(ids, strip_special=False)


@torch.no_grad()
def extract_attention(model, src_ids: Sequence[int], tgt_ids: Sequence[int], spec: GraphSpec | None = None, *,
                      src_vocab=None, tgt_vocab=None, device=None) -> AttentionMaps:
    """Run ``model`` (in eval mode, teacher-forced on ``tgt_ids``) on one pair and
    return every layer's and head's attention as dense matrices.

    ``tgt_ids`` are target ids without <sos>/<eos> (a reference, or a model's own
    output). Token labels come from the vocabularies when given, else the ids.
    Works for any attention structure: node pairs without an edge get 0.
    """
    src_ids, tgt_ids = [int(i) for i in src_ids], [int(i) for i in tgt_ids]
    if not src_ids:
        raise ValueError("src_ids: expected at least one source token, got none")
    sos = tgt_vocab.sos if tgt_vocab is not None else Vocab.sos
    eos = tgt_vocab.eos if tgt_vocab is not None else Vocab.eos
    if device is None:
        device = next(model.parameters()).device
    batch = make_batch([src_ids], [tgt_ids], sos=sos, eos=eos, spec=spec, device=device)
    with eval_mode(model):
        _, att = model(batch, return_attention=True)
    n, m = len(src_ids), len(tgt_ids) + 1
    sizes = {"enc": (n, n), "dec": (m, m), "cross": (m, n)}
    weights, edges = {}, {}
    for kind in KINDS:
        per_layer = att.get(kind)
        if not per_layer or any(w is None for w in per_layer):
            continue  # a block that computes no attention weights (e.g. a mean aggregator)
        n_q, n_k = sizes[kind]
        keys, queries = (t.long().cpu() for t in getattr(batch.graphs, kind).edges())
        flat = queries * n_k + keys
        dense = []
        for w in per_layer:
            w = w.detach().float().cpu().reshape(len(flat), -1)  # (edges, heads)
            d = torch.zeros(w.shape[1], n_q * n_k)
            d.index_add_(1, flat, w.t())  # repeated edges (if a structure makes any) add up
            dense.append(d.view(-1, n_q, n_k))
        weights[kind] = torch.stack(dense)
        present = torch.zeros(n_q * n_k, dtype=torch.bool)
        present[flat] = True
        edges[kind] = present.view(n_q, n_k)
    return AttentionMaps(_labels(src_vocab, src_ids), _labels(tgt_vocab, [sos, *tgt_ids]),
                         _labels(tgt_vocab, [*tgt_ids, eos]), weights, edges)


def check_example(exp, index: int, split: str = "valid") -> None:
    """A clear error for a split that does not exist or an index outside it."""
    if split not in exp.splits:
        raise ValueError(f"split: unknown split {split!r}; expected one of {', '.join(exp.splits)}")
    n = len(exp.splits[split])
    if n == 0:
        raise ValueError(f"split: the {split} split has no examples to visualise")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise ValueError(f"example: index {index!r} is out of range for the {split} split "
                         f"({n} examples, expected 0..{n - 1})")


def example_attention(model, exp, index: int, split: str = "valid") -> AttentionMaps:
    """Attention on example ``index`` of ``split`` of an :class:`~transformer_graph.experiment.Experiment`,
    teacher-forced on its reference target."""
    check_example(exp, index, split)
    src, tgt = exp.splits[split][index]
    return extract_attention(model, src, tgt, exp.spec, src_vocab=exp.src_vocab, tgt_vocab=exp.tgt_vocab)


def text_attention(model, cfg, vocabs, text: str, spec: GraphSpec | None = None,
                   pipeline: TextPipeline | None = None) -> AttentionMaps:
    """Attention on a raw source sentence: tokenised as the task's training data
    was (``pipeline``: the checkpoint's, :func:`~transformer_graph.experiment.trained_text`;
    subword models show pieces), translated greedily (there is no reference), then run
    teacher-forced on (source, the model's own output)."""
    src_vocab, tgt_vocab = vocabs
    pipeline = pipeline or TextPipeline(cfg.data)
    tokens = pipeline.tokenize([text], cfg.data.src_lang)[0]
    if not tokens:
        raise ValueError(f"text: {text!r} tokenises to nothing; expected a sentence with at least one token")
    src = src_vocab.encode(tokens)
    hyp = greedy(model, [src], sos=tgt_vocab.sos, eos=tgt_vocab.eos, max_len_a=cfg.eval.max_len_a,
                 max_len_b=cfg.eval.max_len_b, spec=spec)[0]
    maps = extract_attention(model, src, hyp, spec, src_vocab=src_vocab, tgt_vocab=tgt_vocab)
    maps.src_tokens = list(tokens)  # the words as typed, also where the vocabulary says <unk>
    return maps


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------
def heatmap_figure(maps: AttentionMaps, kind: str, layer: int, title: str | None = None):
    """One panel per head of ``kind`` at ``layer``, shared 0-1 colour scale."""
    maps.check_layer(kind, layer)
    rows, cols = maps.labels(kind)
    heads = maps.num_heads(kind)
    mask = maps.edges[kind].numpy()
    ylabel, xlabel = AXIS_NAMES[kind]
    return plots.heatmap_grid([maps.matrix(kind, layer, h).numpy() for h in range(heads)], rows, cols,
                              titles=[f"head {h}" for h in range(heads)], masks=[mask] * heads,
                              suptitle=title or f"{KIND_NAMES[kind]}, layer {layer}",
                              xlabel=xlabel, ylabel=ylabel, colorbar_label="attention weight")


def bipartite_figure(maps: AttentionMaps, layer: int, title: str | None = None):
    """Encoder-decoder attention of ``layer`` drawn as a bipartite graph, one panel per head:
    source tokens left, target nodes right, edge width and opacity = weight."""
    maps.check_layer("cross", layer)
    heads = maps.num_heads("cross")
    return plots.bipartite_grid([maps.matrix("cross", layer, h).numpy() for h in range(heads)],
                                maps.src_tokens, maps.tgt_tokens, titles=[f"head {h}" for h in range(heads)],
                                suptitle=title or f"{KIND_NAMES['cross']}, layer {layer}",
                                left_title="source", right_title="target")


def write_figures(maps: AttentionMaps, out_dir, *, layers: Sequence[int] | None = None,
                  kinds: Sequence[str] = KINDS, caption: str = "") -> list[Path]:
    """PNG files into ``out_dir``: ``{kind}_layer{L}.png`` (heatmap grid per kind and
    layer) and ``cross_layer{L}_bipartite.png``. ``layers=None`` means every layer."""
    for kind in kinds:
        maps._get(kind)
        for layer in layers or []:
            maps.check_layer(kind, layer)
    out_dir = Path(out_dir)
    written = []
    suffix = f" ({caption})" if caption else ""
    for kind in kinds:
        for layer in (layers if layers is not None else range(maps.num_layers(kind))):
            fig = heatmap_figure(maps, kind, layer, f"{KIND_NAMES[kind]}, layer {layer}{suffix}")
            written.append(plots.save_figure(fig, out_dir / f"{kind}_layer{layer}.png"))
            if kind == "cross":
                fig = bipartite_figure(maps, layer, f"{KIND_NAMES[kind]}, layer {layer}{suffix}")
                written.append(plots.save_figure(fig, out_dir / f"cross_layer{layer}_bipartite.png"))
    return written


# --------------------------------------------------------------------------
# Training snapshots and the animation
# --------------------------------------------------------------------------
def save_snapshot(model, exp, viz, run_dir, epoch: int) -> Path:
    """Write ``RUN_DIR/attention/epoch{epoch}.pt`` for example ``viz.example`` of the
    valid split; unless ``viz.every_epoch``, earlier snapshots are removed."""
    maps = example_attention(model, exp, viz.example, "valid")
    folder = Path(run_dir) / SNAPSHOT_DIR
    path = folder / f"epoch{epoch}.pt"
    atomic_torch_save({"format": SNAPSHOT_FORMAT, "epoch": int(epoch), "split": "valid",
                 "example": int(viz.example), **maps.to_dict()}, path)
    if not viz.every_epoch:
        for old in folder.glob("epoch*.pt"):
            if old != path and _SNAPSHOT_NAME.fullmatch(old.name):
                old.unlink()
    return path


def load_snapshots(run_dir) -> list[tuple[int, AttentionMaps]]:
    """(epoch, maps) of every snapshot in ``RUN_DIR/attention``, by epoch."""
    run_dir = Path(run_dir)
    folder = run_dir / SNAPSHOT_DIR
    files = sorted((int(mt.group(1)), p) for p in folder.glob("epoch*.pt")
                   if (mt := _SNAPSHOT_NAME.fullmatch(p.name))) if folder.is_dir() else []
    if not files:
        task = _node_task_of_run(run_dir)
        if task is not None:
            raise ValueError(f"run dir: {str(run_dir)!r} is a node-classification run (data.task {task!r}); "
                             f"attention snapshots per epoch (--animate) are recorded for the sequence tasks "
                             f"only; draw its checkpoint instead: tg-visualize --checkpoint "
                             f"{run_dir / 'best.pt'} --example 0 --out DIR (or --html page.html)")
        raise ValueError(f"run dir: {str(run_dir)!r} has no attention snapshots (expected "
                         f"{folder}/epoch<N>.pt); train with viz.example set, e.g. "
                         f"--set viz.example=0 --set viz.every_epoch=true")
    out = []
    for epoch, path in files:
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for corrupt files
            raise ValueError(f"{path}: not a readable attention snapshot ({type(err).__name__})") from None
        if not isinstance(d, dict) or d.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{path}: not an attention snapshot (expected format {SNAPSHOT_FORMAT!r})")
        out.append((epoch, AttentionMaps.from_dict(d)))
    return out


def _node_task_of_run(run_dir: Path) -> str | None:
    """``data.task`` of ``RUN_DIR/config.yaml`` when it is a node task (whose runs keep no snapshots)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = load_config(path)
    except ValueError:   # an unreadable config: the plain "no snapshots" message says enough
        return None
    return cfg.data.task if is_node_task(cfg) else None


def write_animation(run_dir, out, *, kind: str = "cross", layer: int = 0, head: int = 0,
                    fps: float = 2.0) -> Path:
    """A GIF with one frame per snapshot: the heatmap of one head (left) and, for
    encoder-decoder attention, its bipartite drawing (right), titled with the epoch."""
    snaps = load_snapshots(run_dir)
    first = snaps[0][1]
    first.check_layer(kind, layer)
    first.check_head(kind, head)
    rows, cols = first.labels(kind)
    side = max(len(rows), len(cols)) * plots.CELL_INCH + 1.2
    bip = kind == "cross"
    bip_w = plots.bipartite_width(first.src_tokens, first.tgt_tokens) if bip else 0.0
    size = (side + 1.4 + bip_w, side + 0.6)
    ylabel, xlabel = AXIS_NAMES[kind]

    def draw(fig, item):
        epoch, maps = item
        axes = fig.subplots(1, 2 if bip else 1, squeeze=False, width_ratios=[side + 1.4, bip_w] if bip else None)[0]
        im = plots.draw_heatmap(axes[0], maps.matrix(kind, layer, head).numpy(), *maps.labels(kind),
                                mask=maps.edges[kind].numpy(), xlabel=xlabel, ylabel=ylabel)
        fig.colorbar(im, ax=axes[0], shrink=0.8).ax.tick_params(labelsize=plots.FONT_SIZE)
        if bip:
            plots.draw_bipartite(axes[1], maps.matrix(kind, layer, head).numpy(), maps.src_tokens,
                                 maps.tgt_tokens, left_title="source", right_title="target")
        fig.suptitle(f"epoch {epoch}: {KIND_NAMES[kind]}, layer {layer}, head {head}",
                     fontsize=plots.FONT_SIZE + 2)

    return plots.animate(snaps, draw, out, size=size, fps=fps)
