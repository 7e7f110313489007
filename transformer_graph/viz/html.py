"""The attention explorer: one self-contained HTML page per model and sentence.

The page shows the attention of :class:`~transformer_graph.viz.attention.AttentionMaps`
as heatmaps (one kind x layer x head at a time, or the mean over heads), as a
small-multiples overview of every layer and head, and as what it is in this
project, a graph: the structure's real key -> query edges, drawn with opacity and
width = weight (cross-attention as a bipartite drawing, source left, target
right). Universal Transformer pages add the ACT steps per position; every page
shows the model's output beside the pictures. A run's attention snapshots
(``viz.example`` during training) become one page with a slider over epochs.

Everything is in the one file: the data as JSON, the script and the style from
``viz/explorer/`` (package data, inlined), and a Content-Security-Policy that
forbids the page any network request, so it opens from disk, offline, in a
sandbox. Weights are stored to 6 significant digits (|error| < 1e-6 for weights
in [0, 1]), which keeps a Multi30k sentence with 3+3 layers x 4 heads well
under 2 MB.

    html_for_checkpoint("runs/copy/best.pt", "copy.html", example=3)
    html_for_checkpoint("runs/m30k/best.pt", "m30k.html", text="A man rides a bike.")
    html_for_run("runs/copy", "copy_epochs.html")

A node classifier's checkpoint (karate, PATTERN, ...) gets the same page with one kind, ``node``:
the graph drawn with its spring layout (computed here, embedded in the data), attention on its
edges per layer and head, its classes and predictions (:mod:`transformer_graph.viz.node_attention`
says how it is drawn); small graphs also get the heatmap and overview views.

    html_for_checkpoint("runs/karate/best.pt", "karate.html", example=0, split="test")
"""
from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch

from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.config import Config, is_node_task, load_config
from transformer_graph.experiment import (build_experiment, checkpoint_config, graph_spec, trained_from_checkpoint,
                                          trained_text)
from transformer_graph.files import atomic_write_text
from transformer_graph.graphs.build import KINDS
from transformer_graph.graphs.structures import FAMILIES
from transformer_graph.inference.decoding import greedy
from transformer_graph.viz.attention import (AttentionMaps, KIND_NAMES, SNAPSHOT_DIR, check_example,
                                             example_attention, load_snapshots, text_attention)
from transformer_graph.viz.node_attention import (PALETTE, NodeAttention, check_top_k, checkpoint_node_attention,
                                                  resolve_top_k, spring_positions)

PAGE_FORMAT = "transformer_graph/explorer/1"
SIGNIFICANT_DIGITS = 6
_TINY = 5e-8          # weights below this are stored as 0 (saves bytes; far inside the 1e-6 promise)
_ASSETS = ("explorer/page.html", "explorer/explorer.css", "explorer/explorer.js")
_NODE_MEAN_NOTE = ("This model's aggregator is '{agg}': every in-edge of a node weighs 1 / in-degree{sage}. These "
                   "weights are fixed by the graph, not computed from the nodes' states; they are shown so the "
                   "structure can be compared with attention models.")
_MEAN_NOTE = ("This model's aggregator is 'mean' (a fully connected GCN): every in-edge of a node weighs "
              "1 / in-degree. These weights are fixed by the graph structure, not computed from the "
              "tokens; they are shown so the structure can be compared with attention models.")


# --------------------------------------------------------------------------
# Validation (called before any model runs or any file is written)
# --------------------------------------------------------------------------
def check_out_path(out) -> Path:
    """``out`` must name an .html file in a directory that exists."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"out: {str(path)!r} is a directory; expected an .html file name, "
                         f"e.g. {path / 'attention.html'}")
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"out: {str(path)!r} does not end in .html; expected a file name like attention.html")
    parent = path.parent  # "." for a bare file name
    if not parent.is_dir():
        raise ValueError(f"out: the directory {str(parent)!r} does not exist; create it first "
                         f"(mkdir -p {parent}) or write the page elsewhere")
    return path


def stack_depths(cfg: Config) -> dict[str, int]:
    """Layers per attention kind the config's model has (Universal Transformer: its max_depth steps)."""
    m = cfg.model
    if m.kind == "universal":
        return {kind: m.max_depth for kind in KINDS}
    dec = m.decoder_layers or m.layers
    return {"enc": m.layers, "dec": dec, "cross": dec}


def check_layers(layers: Sequence[int] | None, depths: Mapping[str, int], step: bool = False) -> list[int] | None:
    """``layers`` as a sorted list of distinct indices that exist in every kind (None: all)."""
    if layers is None:
        return None
    word = "step" if step else "layer"
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    chosen = []
    for layer in layers:
        for kind, n in depths.items():
            if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
                raise ValueError(f"layers: {word} {layer!r} does not exist for {KIND_NAMES[kind]}; the model has "
                                 f"{n} {word}(s) there, expected 0..{n - 1}")
        if layer not in chosen:
            chosen.append(layer)
    if not chosen:
        raise ValueError("layers: expected at least one layer index, got an empty list (omit it for every layer)")
    return sorted(chosen)


# --------------------------------------------------------------------------
# Page data
# --------------------------------------------------------------------------
def _rounded(t: torch.Tensor) -> list:
    """Flat row-major values to SIGNIFICANT_DIGITS digits; ints for exact zeros (shorter JSON)."""
    return [0 if abs(x) < _TINY else float(f"{x:.{SIGNIFICANT_DIGITS}g}") for x in t.flatten().tolist()]


def _kind_data(maps: AttentionMaps, kind: str, layers: Sequence[int] | None) -> dict:
    w = maps.weights[kind]
    chosen = list(range(w.shape[0])) if layers is None else list(layers)
    for layer in chosen:
        maps.check_layer(kind, layer)
    n_q, n_k = maps.edges[kind].shape
    return {"layers": chosen, "heads": int(w.shape[1]), "rows": int(n_q), "cols": int(n_k),
            "edges": "".join("1" if e else "0" for e in maps.edges[kind].flatten().tolist()),
            "weights": [[_rounded(w[layer, h]) for h in range(w.shape[1])] for layer in chosen]}


def frame_data(maps: AttentionMaps, *, label: str = "", act_steps: Mapping[str, Sequence[int]] | None = None,
               layers: Sequence[int] | None = None) -> dict:
    """One frame of the page: tokens, every kind's edges and weights, ACT steps."""
    kinds = {kind: _kind_data(maps, kind, layers) for kind in KINDS if kind in maps.weights}
    if not kinds:
        raise ValueError("maps: this model reports no attention weights for any kind; nothing to show")
    act = None
    if act_steps is not None:
        act = {side: [int(s) for s in act_steps[side]] for side in ("enc", "dec") if side in act_steps}
        sizes = {"enc": len(maps.src_tokens), "dec": len(maps.tgt_tokens)}
        for side, steps in act.items():
            if len(steps) != sizes[side]:
                raise ValueError(f"act_steps[{side!r}]: {len(steps)} values for {sizes[side]} positions; "
                                 f"expected one step count per {'source token' if side == 'enc' else 'target node'}")
    return {"label": label, "src": list(maps.src_tokens), "tgt": list(maps.tgt_tokens),
            "tgt_out": list(maps.tgt_out_tokens), "kinds": kinds, "act": act}


def _outputs(output_text) -> list[list[str]]:
    if output_text is None:
        return []
    if isinstance(output_text, str):
        return [["output", output_text]]
    return [[str(k), str(v)] for k, v in dict(output_text).items()]


def page_data(frames: Sequence[dict], *, title: str, output_text=None, notes: Sequence[str] = (),
              model: Mapping | None = None, frame_label: str | None = None) -> dict:
    """The JSON object the page's script reads (see viz/explorer/explorer.js)."""
    if not frames:
        raise ValueError("frames: expected at least one frame of attention")
    return {"format": PAGE_FORMAT, "title": str(title), "outputs": _outputs(output_text), "notes": list(notes),
            "model": dict(model or {}), "frame_label": frame_label, "frames": list(frames)}


def render_page(data: Mapping) -> str:
    """The HTML text: template with the style, script and data inlined."""
    folder = resources.files("transformer_graph.viz")
    page, css, js = (folder.joinpath(name).read_text(encoding="utf-8") for name in _ASSETS)
    # "<" escaped inside the JSON: no token ("</script>", "<!--") can end the data block early.
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    parts = {"/*@STYLE@*/": css, "/*@SCRIPT@*/": js, "@DATA@": blob, "@TITLE@": html.escape(str(data["title"]))}
    for marker in parts:
        if page.count(marker) != 1:
            raise RuntimeError(f"explorer/page.html: expected the marker {marker} exactly once")
    # One pass over the template: inserted text (user tokens, titles) is never scanned for markers.
    return re.sub("|".join(re.escape(m) for m in parts), lambda mt: parts[mt.group(0)], page)


def write_html(maps: AttentionMaps, out, *, title: str, output_text=None,
               act_steps: Mapping[str, Sequence[int]] | None = None, notes: Sequence[str] = (),
               layers: Sequence[int] | None = None, model: Mapping | None = None) -> Path:
    """Write the explorer page of one model on one (source, target) pair.

    ``output_text``: what the model produced, a string or ``{label: text}`` (e.g. source,
    reference, greedy output); ``act_steps``: ``{"enc": steps per source token, "dec": steps
    per target node}`` for a Universal Transformer; ``notes``: sentences shown above the
    pictures; ``layers``: only these layer indices (default all); ``model``: facts shown
    in the info box (``kind``, ``aggregator``, ``structure``: ``{kind: description}``).
    """
    path = check_out_path(out)
    frame = frame_data(maps, act_steps=act_steps, layers=layers)
    return atomic_write_text(path, render_page(page_data([frame], title=title, output_text=output_text,
                                                   notes=notes, model=model)))


def write_run_html(snapshots: Sequence[tuple[int, AttentionMaps]], out, *, title: str, output_text=None,
                   notes: Sequence[str] = (), model: Mapping | None = None) -> Path:
    """One page with a slider over the epochs of ``snapshots`` ((epoch, maps) pairs)."""
    path = check_out_path(out)
    frames = [frame_data(maps, label=f"epoch {epoch}") for epoch, maps in snapshots]
    return atomic_write_text(path, render_page(page_data(frames, title=title, output_text=output_text, notes=notes,
                                                   model=model, frame_label="epoch")))


# --------------------------------------------------------------------------
# From a checkpoint or a run directory (what the visualize command calls)
# --------------------------------------------------------------------------
def describe_model(cfg: Config) -> dict:
    """Kind, aggregator and each attention kind's structure, for the page's info box."""
    s = cfg.model.structure
    structure = {}
    for kind in KINDS:
        name = getattr(s, kind)
        if name in FAMILIES:
            params = {"window": f"w={s.window}", "dilated": f"w={s.window}, dilation={s.dilation}",
                      "global_window": f"w={s.window}, {s.global_tokens} global"}[name]
            name = f"{name} ({params})"
        structure[kind] = name
    info = {"task": cfg.data.task, "kind": cfg.model.kind, "aggregator": cfg.model.aggregator,
            "structure": structure}
    if cfg.model.kind == "universal":
        info["max_depth"] = cfg.model.max_depth
    return info


def model_notes(cfg: Config) -> list[str]:
    notes = []
    if cfg.model.aggregator == "mean":
        notes.append(_MEAN_NOTE)
    if cfg.model.kind == "universal":
        notes.append(f"Universal Transformer: one shared layer applied up to {cfg.model.max_depth} times, so "
                     f"'step' replaces 'layer'. A node that has halted receives nothing at later steps "
                     f"(its rows are 0 there).")
    return notes


def act_steps_of(model, maps: AttentionMaps) -> dict[str, list[int]] | None:
    """Steps per position from the Universal Transformer's ACT statistics of its last
    forward pass (the one :func:`extract_attention` just ran); None for other models."""
    stats = getattr(model, "act_stats", None)
    if not stats:
        return None
    steps = {side: stats[side].steps.cpu().tolist() for side in ("enc", "dec")}
    if len(steps["enc"]) != len(maps.src_tokens) or len(steps["dec"]) != len(maps.tgt_tokens):
        raise RuntimeError("act_steps_of: the model's last forward pass was not on this pair")
    return steps


def _text(tokens: Sequence[str]) -> str:
    return " ".join(tokens)


def html_for_checkpoint(checkpoint, out, *, example: int | None = None, split: str = "valid",
                        text: str | None = None, layers: Sequence[int] | None = None,
                        top_k: int | None = None) -> Path:
    """The explorer page of a trained model on valid/test/train example ``example``
    (teacher-forced on its reference; the greedy output is shown beside it) or on a raw
    ``text`` (teacher-forced on the greedy output). A node classifier's page shows graph
    ``example`` of ``split`` (:func:`html_for_node_checkpoint`; ``top_k`` is its option).
    Every argument is checked before the model runs; errors are ValueErrors naming the argument."""
    path = check_out_path(out)
    if (example is None) == (text is None):
        raise ValueError("example/text: give exactly one of example=N or text='...'")
    check_top_k(top_k)
    ckpt = load_checkpoint(checkpoint)   # read once: its config says which kind of model it holds
    if is_node_task(checkpoint_config(ckpt, checkpoint)):
        return html_for_node_checkpoint(ckpt, checkpoint, path, example=example, split=split, text=text,
                                        layers=layers, top_k=top_k)
    if top_k is not None:
        raise ValueError(f"top_k: {top_k!r} applies to node-classification checkpoints (edges drawn per node); "
                         f"{checkpoint} is a sequence model: drop it")
    model, cfg, vocabs, ckpt = trained_from_checkpoint(ckpt, checkpoint)
    pipeline = trained_text(cfg, ckpt, checkpoint)
    universal = cfg.model.kind == "universal"
    layers = check_layers(layers, stack_depths(cfg), step=universal)
    spec = graph_spec(cfg.model)
    src_vocab, tgt_vocab = vocabs
    with torch.no_grad():
        if text is not None:
            maps = text_attention(model, cfg, vocabs, text, spec, pipeline)  # raises before decoding on empty text
            act = act_steps_of(model, maps)
            shown = {"source (as typed)": text, "source tokens": _text(maps.src_tokens),
                     "model output (greedy)": _text(maps.tgt_out_tokens[:-1])}
            if pipeline.subwords is not None:  # the pieces above, the words they spell here
                shown["model output (text)"] = pipeline.detokenize(maps.tgt_out_tokens[:-1])
            where = "text"
        else:
            exp = build_experiment(cfg, vocabs, pipeline.subwords)
            check_example(exp, example, split)
            src, tgt = exp.splits[split][example]
            hyp = greedy(model, [src], sos=tgt_vocab.sos, eos=tgt_vocab.eos, max_len_a=cfg.eval.max_len_a,
                         max_len_b=cfg.eval.max_len_b, spec=spec)[0]
            maps = example_attention(model, exp, example, split)
            act = act_steps_of(model, maps)
            shown = {"source": _text(maps.src_tokens),
                     "reference (shown: teacher-forced)": _text(maps.tgt_out_tokens[:-1]),
                     "model output (greedy)": _text(tgt_vocab.decode(hyp))}
            if pipeline.subwords is not None:
                shown["model output (text)"] = pipeline.detokenize(tgt_vocab.decode(hyp))
            where = f"{split} example {example}"
    for kind in maps.weights:  # a universal model may halt before a requested step
        for layer in layers or []:
            if layer >= maps.num_layers(kind):
                raise ValueError(f"layers: step {layer} was not reached on this sentence; every node of "
                                 f"the {'encoder' if kind == 'enc' else 'decoder'} halted after "
                                 f"{maps.num_layers(kind)} step(s)")
    title = f"{cfg.data.task}: {where} ({Path(checkpoint).name})"
    return write_html(maps, path, title=title, output_text=shown, act_steps=act, notes=model_notes(cfg),
                      layers=layers, model=describe_model(cfg))


# --------------------------------------------------------------------------
# Node classifiers: one graph with its layout (viz/node_attention.py)
# --------------------------------------------------------------------------
def node_frame_data(att: NodeAttention, pos, *, layers: Sequence[int] | None = None, top_k: int | None = None,
                    label: str = "") -> dict:
    """One frame of a node classifier's page: kind ``node`` holds the attention graph's edges as lists
    (``src`` key -> ``dst`` query, the model's edge order) and ``weights[layer position][head]`` per
    edge; ``graph`` the nodes, their positions (y up), classes, predictions, the split's nodes and the
    in-edges drawn per node by default (0: all)."""
    chosen = list(range(att.num_layers)) if layers is None else [att.check_layer(layer) for layer in layers]
    n = att.num_nodes
    node = {"layers": chosen, "heads": att.num_heads, "rows": n, "cols": n, "src": att.src.tolist(),
            "dst": att.dst.tolist(),
            "weights": [[_rounded(att.weights[layer, h]) for h in range(att.num_heads)] for layer in chosen]}
    graph = {"nodes": att.num_real, "global": att.num_global, "names": att.node_names(),
             "pos": [round(float(v), 4) for v in torch.as_tensor(pos).flatten().tolist()],
             "labels": att.labels.tolist(), "preds": att.preds.tolist(),
             "scored": "".join("1" if m else "0" for m in att.scored.tolist()), "split": att.split,
             "transductive": att.transductive, "classes": att.num_classes,
             "colours": [PALETTE[c % len(PALETTE)] for c in range(att.num_classes)],
             "top_k": resolve_top_k(att, top_k) or 0}
    if len(graph["pos"]) != 2 * n:
        raise ValueError(f"pos: {len(graph['pos']) // 2} positions for {n} nodes; expected one (x, y) per node "
                         f"(transformer_graph.viz.node_attention.spring_positions)")
    return {"label": label, "src": [], "tgt": [], "tgt_out": [], "kinds": {"node": node}, "act": None, "graph": graph}


def write_node_html(att: NodeAttention, out, *, title: str, pos=None, layers: Sequence[int] | None = None,
                    top_k: int | None = None, output_text=None, notes: Sequence[str] = (),
                    model: Mapping | None = None) -> Path:
    """Write the explorer page of a node classifier on one graph (``pos``: its layout, default
    :func:`~transformer_graph.viz.node_attention.spring_positions`)."""
    path = check_out_path(out)
    frame = node_frame_data(att, spring_positions(att) if pos is None else pos, layers=layers, top_k=top_k)
    return atomic_write_text(path, render_page(page_data([frame], title=title, output_text=output_text,
                                                         notes=notes, model=model)))


def describe_node_model(cfg: Config) -> dict:
    m = cfg.model
    structure = {"sparse": "the graph's edges", "complete": "every pair of a graph's nodes",
                 "global": f"the graph's edges + {m.global_nodes} global node(s)"}[m.graph_structure]
    loops = " and self loops" if m.self_loops and m.graph_structure != "complete" else ""
    return {"task": cfg.data.task, "kind": f"graph encoder ({m.layers} layers, d_model {m.d_model})",
            "aggregator": m.aggregator, "structure": {"node": f"{m.graph_structure} ({structure}{loops})"}}


def node_notes(cfg: Config, att: NodeAttention, top_k: int | None) -> list[str]:
    notes = []
    if cfg.model.aggregator in ("mean", "sage"):
        sage = " (GraphSAGE then sets the node's own state beside that mean)" if cfg.model.aggregator == "sage" else ""
        notes.append(_NODE_MEAN_NOTE.format(agg=cfg.model.aggregator, sage=sage))
    notes.append("Each edge j → i is drawn as the half of the line i–j that touches i: the halves at a node "
                 "are what it takes from each neighbour; its ring is its self-loop weight. Hover or click a node "
                 "to see all of its in-edges.")
    k = resolve_top_k(att, top_k)
    if k is not None:
        notes.append(f"{att.num_nodes} nodes and {len(att.src)} edges: the graph view draws each node's {k} "
                     f"strongest in-edge(s) (the 'edges' control changes it); a hovered node shows all of its own.")
    if att.transductive:
        notes.append(f"One graph serves every split: the {att.split} split is the nodes drawn solid, the others "
                     f"are faded (their predictions are shown all the same).")
    return notes


def node_outputs(att: NodeAttention, cfg: Config, where: str) -> dict[str, str]:
    right, total = att.correct()
    edges = int(att.data_edges.shape[1])
    shown = {"graph": f"{where}: {att.num_real} nodes, {edges} directed edges"
                      + (f", {att.num_global} global node(s)" if att.num_global else ""),
             f"accuracy on the {att.split} nodes": f"{right} / {total} ({100.0 * right / max(total, 1):.1f} %)"}
    wrong = [(i, int(att.labels[i]), int(att.preds[i])) for i in range(att.num_real)
             if att.preds[i] != att.labels[i] and att.scored[i]]
    if wrong:
        listed = ", ".join(f"{i}: {y}→{p}" for i, y, p in wrong[:20])
        shown[f"wrong {att.split} nodes (true→predicted)"] = listed + (f", … {len(wrong) - 20} more"
                                                                          if len(wrong) > 20 else "")
    return shown


def html_for_node_checkpoint(ckpt: dict, checkpoint, out, *, example: int | None, split: str = "valid",
                             text: str | None = None, layers: Sequence[int] | None = None,
                             top_k: int | None = None) -> Path:
    """The explorer page of a node classifier's checkpoint (``ckpt``, loaded from ``checkpoint``) on graph
    ``example`` of ``split`` (karate, Planetoid: the one graph, ``split`` its nodes of interest)."""
    path = check_out_path(out)
    cfg = checkpoint_config(ckpt, checkpoint)
    if text is not None:
        raise ValueError(f"text: {checkpoint} is a node-classification checkpoint (data.task {cfg.data.task!r}); "
                         f"its input is a graph, not a sentence: give example=N (graph N of the split) instead")
    if example is None:
        raise ValueError("example: a node-classification page needs example=N (graph N of the split)")
    layers = check_layers(layers, {"node": cfg.model.layers})
    check_top_k(top_k)
    att, cfg = checkpoint_node_attention(ckpt, checkpoint, example, split)
    where = f"the graph, {split} nodes" if att.transductive else f"{split} graph {example}"
    title = f"{cfg.data.task}: {where} ({Path(checkpoint).name})"
    return write_node_html(att, path, title=title, layers=layers, top_k=top_k,
                           output_text=node_outputs(att, cfg, where), notes=node_notes(cfg, att, top_k),
                           model=describe_node_model(cfg))


def html_for_run(run_dir, out) -> Path:
    """One page with a slider over the epochs of ``RUN_DIR/attention/epoch*.pt``."""
    path = check_out_path(out)
    run_dir = Path(run_dir)
    snaps = load_snapshots(run_dir)  # a clear ValueError when there are none
    cfg_path = run_dir / "config.yaml"
    cfg = load_config(cfg_path) if cfg_path.is_file() else None
    first = snaps[-1][1]
    example = f"valid example {cfg.viz.example}" if cfg is not None and cfg.viz.example is not None \
        else "the snapshot example"
    title = f"{cfg.data.task if cfg else run_dir.name}: {example} by epoch ({run_dir.name}/{SNAPSHOT_DIR})"
    shown = {"source": _text(first.src_tokens), "reference (shown: teacher-forced)": _text(first.tgt_out_tokens[:-1])}
    notes = [f"{len(snaps)} snapshot(s): the slider steps through the epochs"
             + ("" if len(snaps) > 1 else "; train with viz.every_epoch: true to keep one per epoch")]
    if cfg is not None:
        notes = model_notes(cfg) + notes
    return write_run_html(snaps, path, title=title, output_text=shown, notes=notes,
                          model=describe_model(cfg) if cfg is not None else None)
