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
"""
from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch

from transformer_graph.config import Config, load_config
from transformer_graph.experiment import build_experiment, graph_spec, load_trained, trained_text
from transformer_graph.files import atomic_write_text
from transformer_graph.graphs.build import KINDS
from transformer_graph.graphs.structures import FAMILIES
from transformer_graph.inference.decoding import greedy
from transformer_graph.viz.attention import (AttentionMaps, KIND_NAMES, SNAPSHOT_DIR, check_example,
                                             example_attention, load_snapshots, text_attention)

PAGE_FORMAT = "transformer_graph/explorer/1"
SIGNIFICANT_DIGITS = 6
_TINY = 5e-8          # weights below this are stored as 0 (saves bytes; far inside the 1e-6 promise)
_ASSETS = ("explorer/page.html", "explorer/explorer.css", "explorer/explorer.js")
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
                        text: str | None = None, layers: Sequence[int] | None = None) -> Path:
    """The explorer page of a trained model on valid/test/train example ``example``
    (teacher-forced on its reference; the greedy output is shown beside it) or on a raw
    ``text`` (teacher-forced on the greedy output). Every argument is checked before
    the model runs; errors are ValueErrors naming the argument."""
    path = check_out_path(out)
    if (example is None) == (text is None):
        raise ValueError("example/text: give exactly one of example=N or text='...'")
    model, cfg, vocabs, ckpt = load_trained(checkpoint)
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
