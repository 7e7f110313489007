"""Validation and test metrics: loss, token accuracy, exact match, BLEU; for the node tasks the
benchmark's class-weighted accuracy (PATTERN, CLUSTER) and node accuracy (karate, Planetoid)."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F

from transformer_graph.checkpoint import CheckpointError, load_checkpoint
from transformer_graph.config import NODE_TASKS
from transformer_graph.data.datasets import Batcher, Dataset, check_lengths, collate, read_lines
from transformer_graph.data.text import task_detokenize
from transformer_graph.experiment import (TRANSLATION, NodeExperiment, build_experiment, build_node_experiment,
                                          checkpoint_config, graph_data_info, graph_spec, trained_from_checkpoint,
                                          trained_nodes_from_checkpoint, trained_text)
from transformer_graph.inference.decoding import beam_search
from transformer_graph.graphs.build import GraphSpec
from transformer_graph.nn.loss import label_smoothed_loss, token_correct
from transformer_graph.nn.node_loss import SBMAccuracy, weighted_cross_entropy
from transformer_graph.outputs import check_output_file


@torch.no_grad()
def evaluate_loss(model, dataset: Dataset, spec: GraphSpec, *, batch_size: int | None = 128,
                  max_tokens: int | None = None, device="cpu", eps: float = 0.0) -> dict:
    """Mean loss, NLL, perplexity and token accuracy of teacher-forced prediction."""
    model.eval()
    batcher = Batcher(dataset.lengths, batch_size=batch_size, max_tokens=max_tokens, shuffle=False)
    loss = nll = 0.0
    correct = tokens = 0
    for idx in batcher.batches(0):
        batch = collate(dataset, idx, spec, device)
        logp = model(batch)
        l_sum, n_sum = label_smoothed_loss(logp, batch.labels, eps, dataset.tgt_vocab.pad)
        loss += float(l_sum)
        nll += float(n_sum)
        correct += token_correct(logp, batch.labels)
        tokens += batch.labels.numel()
    tokens = max(tokens, 1)
    return {"loss": loss / tokens, "nll": nll / tokens, "ppl": math.exp(min(nll / tokens, 50)),
            "acc": correct / tokens, "tokens": tokens}


@torch.no_grad()
def decode_dataset(model, src_seqs: Sequence[Sequence[int]], spec: GraphSpec, *, sos: int, eos: int,
                   beam: int = 1, alpha: float = 0.6, max_len_a: float = 1.0, max_len_b: int = 10,
                   incremental: bool = True, sentences_per_batch: int = 128, progress=None,
                   state_factory=None, forbid: Sequence[int] | None = None) -> list[list[int]]:
    """Decode many sentences, batching them by length so each batch ends at about the same step.

    A batch holds ``sentences_per_batch`` sentences whatever the beam (``beam`` hypotheses
    each): a decoding step's cost is mostly fixed work (the graphs, the ranking, a few dozen
    small kernels per layer) that a bigger batch shares. Measured on test2016 (beam 5, 1
    thread, docs/BENCHMARKS.md): 128 sentences per batch decode 1.2x (multi30k_cpu size) to
    1.6x (the subword Tiny model) faster than the 25 (128 / beam) this used before, 256 no
    faster than 128; the key/value caches then hold
    about 128 x beam x (the batch's longest length limit) positions per layer.

    ``state_factory`` is :func:`beam_search`'s (another decoder driven by the same search and
    batching: the benchmark's dense baseline)."""
    model.eval()
    order = sorted(range(len(src_seqs)), key=lambda i: len(src_seqs[i]))
    out: list[list[int] | None] = [None] * len(src_seqs)
    per_batch = max(1, sentences_per_batch)
    for start in range(0, len(order), per_batch):
        chunk = order[start:start + per_batch]
        hyps = beam_search(model, [src_seqs[i] for i in chunk], sos=sos, eos=eos, beam=beam, alpha=alpha,
                           max_len_a=max_len_a, max_len_b=max_len_b, spec=spec, incremental=incremental,
                           state_factory=state_factory, forbid=forbid)
        for i, h in zip(chunk, hyps):
            out[i] = h[0].tokens
        if progress is not None:
            progress.update(len(chunk))
    return out  # type: ignore[return-value]


def exact_match(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> float:
    check_counts(len(hyps), len(refs))
    return sum(list(h) == list(r) for h, r in zip(hyps, refs)) / max(len(refs), 1)


def check_counts(n_hyp: int, n_ref: int) -> None:
    if n_hyp != n_ref:
        raise ValueError(f"got {n_hyp} hypotheses but {n_ref} references; expected one hypothesis "
                         f"per reference sentence")


def bleu_tokenized(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], lowercase: bool = False):
    """BLEU on already tokenised text (sacrebleu tokenize='none'): the multi-bleu.perl protocol;
    ``lowercase``: ``multi-bleu.perl -lc``, the protocol of the WMT multimodal task's findings."""
    check_counts(len(hyps), len(refs))
    return sacrebleu.corpus_bleu([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]],
                                 tokenize="none", force=True, lowercase=lowercase)


def chrf(hyps: Sequence[str], refs: Sequence[str]):
    """sacreBLEU's chrF on detokenised text: (score, signature)."""
    check_counts(len(hyps), len(refs))
    metric = sacrebleu.metrics.CHRF()
    return metric.corpus_score(list(hyps), [list(refs)]), str(metric.get_signature())


def translation_metrics(hyp_words: Sequence[Sequence[str]], ref_words: Sequence[Sequence[str]],
                        hyp_text: Sequence[str], ref_text: Sequence[str]) -> dict:
    """The full BLEU protocol: tokenised BLEU cased (``bleu_tok``, the reference's numbers) and
    lowercased (``bleu_tok_lc``), detokenised sacreBLEU and chrF with their signatures."""
    bleu, bleu_signature = bleu_detok(hyp_text, ref_text)
    chrf_score, chrf_signature = chrf(hyp_text, ref_text)
    return {"bleu_tok": bleu_tokenized(hyp_words, ref_words).score,
            "bleu_tok_lc": bleu_tokenized(hyp_words, ref_words, lowercase=True).score,
            "sacrebleu": bleu.score, "sacrebleu_signature": bleu_signature,
            "chrf": chrf_score.score, "chrf_signature": chrf_signature}


def bleu_detok(hyps: Sequence[str], refs: Sequence[str]):
    """Standard sacreBLEU on detokenised text; ``str(result)`` and its signature are reportable."""
    check_counts(len(hyps), len(refs))
    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(list(hyps), [list(refs)])
    return score, str(metric.get_signature())


def check_decoding_options(beam: int | None, alpha: float | None, limit: int | None) -> None:
    """ValueErrors naming the option, for values that would decode nonsense or silently fewer sentences
    (``limit=-1`` would drop the last sentence, as a slice does)."""
    for name, value in (("--beam", beam), ("--limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"--alpha: expected a non-negative number, got {alpha!r}")


def evaluate_checkpoint(path, split: str = "test", *, beam: int | None = None, alpha: float | None = None,
                        src_file=None, ref_file=None, hyp_file=None, incremental: bool = True,
                        limit: int | None = None, allow_unk: bool = False) -> dict:
    """Metrics of a checkpoint on a split (or on raw parallel files); writes the hypotheses.

    Translation tasks report the full protocol (:func:`translation_metrics`): tokenised BLEU
    cased and lowercased (sacrebleu, tokenize='none', on the Moses-tokenised references: the
    multi-bleu.perl protocol behind the reference's numbers; subword output is joined back into
    words first), and detokenised sacreBLEU and chrF on the raw references, with signatures.
    Decoding never emits <pad>/<sos>, nor <unk> unless ``allow_unk`` (what a word vocabulary
    cannot express: the old behaviour, for comparisons; ``unk_in_output`` counts them).
    Synthetic tasks report token accuracy and exact-match sequence accuracy. Every argument and
    the hypotheses' file are checked before any decoding. A node task's checkpoint reports
    :func:`evaluate_nodes` (no decoding, no hypotheses file).
    """
    check_decoding_options(beam, alpha, limit)
    ckpt = load_checkpoint(path)
    if checkpoint_config(ckpt, path).data.task in NODE_TASKS:
        decoding = [name for name, given in (("--beam", beam is not None), ("--alpha", alpha is not None),
                                             ("--src-file", bool(src_file)), ("--ref-file", bool(ref_file)),
                                             ("--hyp-file", bool(hyp_file)), ("--full-recompute", not incremental),
                                             ("--allow-unk", allow_unk)) if given]
        if decoding:
            raise ValueError(f"{', '.join(decoding)}: decoding options, but {path} is a node-classification "
                             f"checkpoint: it is evaluated on a split of its task's graphs (--split, --limit)")
        return evaluate_node_checkpoint(ckpt, path, split, limit=limit)
    model, cfg, (src_vocab, tgt_vocab), ckpt = trained_from_checkpoint(ckpt, path)
    text = trained_text(cfg, ckpt, path)
    beam = cfg.eval.beam if beam is None else beam
    alpha = cfg.eval.alpha if alpha is None else alpha
    out = check_output_file(hyp_file or Path(path).with_name(
        f"{Path(path).stem}.{Path(str(src_file or split)).name}.beam{beam}.hyp.txt"), "--hyp-file")
    translation = cfg.data.task in TRANSLATION
    metrics: dict = {"split": split, "beam": beam}
    raw_refs = None
    if src_file:
        src_lines, raw_refs = read_lines(src_file, "source file"), read_lines(ref_file, "reference file")
        check_counts(len(src_lines), len(raw_refs))
        pairs = list(zip(text.tokenize(src_lines, cfg.data.src_lang), text.tokenize(raw_refs, cfg.data.tgt_lang)))
        metrics["split"] = str(src_file)
        spec = graph_spec(cfg.model)
        dataset = Dataset.from_tokens(pairs, src_vocab, tgt_vocab)
    else:
        exp = build_experiment(cfg, (src_vocab, tgt_vocab), text.subwords)
        dataset, pairs, spec = exp.splits[split], exp.tokens[split], exp.spec
        if cfg.data.task == "multi30k":
            from transformer_graph.data.multi30k import load_raw  # noqa: PLC0415  (sacremoses: Multi30k only)
            raw_refs = load_raw(cfg.data.path, split, cfg.data.tgt_lang)
    if limit is not None:
        dataset = Dataset(dataset.pairs[:limit], src_vocab, tgt_vocab)
        pairs = pairs[:limit]
        raw_refs = raw_refs[:limit] if raw_refs is not None else None
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {path} has no sentences to evaluate")
    check_lengths({metrics["split"]: pairs}, model.pos.max_len, required=())  # before decoding, not during
    if not translation:
        metrics.update({k: v for k, v in evaluate_loss(model, dataset, spec).items() if k != "tokens"})
    start = time.time()
    hyps = decode_dataset(model, [s for s, _ in dataset.pairs], spec, sos=tgt_vocab.sos, eos=tgt_vocab.eos,
                          beam=beam, alpha=alpha, max_len_a=cfg.eval.max_len_a, max_len_b=cfg.eval.max_len_b,
                          incremental=incremental,
                          forbid=(tgt_vocab.pad, tgt_vocab.sos) if allow_unk else None)
    metrics["decode_time_s"] = time.time() - start
    metrics["sentences_per_s"] = len(hyps) / max(metrics["decode_time_s"], 1e-9)
    hyp_words = [text.words(tgt_vocab.decode(h)) for h in hyps]
    hyp_text = [task_detokenize(cfg.data, w) for w in hyp_words]
    if translation:
        ref_words = [text.words(t) for _, t in pairs]
        refs = raw_refs if raw_refs is not None else [" ".join(w) for w in ref_words]
        if cfg.data.lowercase:  # a lowercasing model's output is scored against lowercased references
            refs = [r.lower() for r in refs]
        metrics.update(translation_metrics(hyp_words, ref_words, hyp_text, refs))
        metrics["unk_in_output"] = sum(w.count(tgt_vocab.itos[tgt_vocab.unk]) for w in hyp_words)
    else:
        metrics["exact_match"] = exact_match(hyps, [t for _, t in dataset.pairs])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in hyp_text), encoding="utf-8")
    return {"checkpoint": str(path), "hypotheses": str(out), "metrics": metrics}


# --------------------------------------------------------------------------- node classification

@torch.no_grad()
def evaluate_nodes(model, exp: NodeExperiment, split: str, *, batch_size: int, device="cpu",
                   limit: int | None = None) -> dict:
    """Node-classification metrics of ``model`` on ``split`` of ``exp`` (its graphs in order, no shuffling).

    PATTERN/CLUSTER, the protocol of benchmarking-gnns (``evaluate_network_sparse``): batches of
    ``batch_size`` graphs (the training batch size), ``loss`` the mean over batches of the weighted
    cross-entropy, ``class_weighted_acc`` the mean over batches of ``accuracy_SBM`` (in percent; the
    last, partial batch weighs as much as a full one) -- the number the benchmark reports -- and
    ``class_weighted_acc_pooled`` the same metric over all the split's nodes at once (independent of
    the batching); ``acc`` is the plain fraction of nodes right. Karate/Planetoid: the one graph, the
    nodes of the split's mask: ``loss`` their cross-entropy, ``acc`` the fraction right. ``limit``:
    only the first graphs (inductive tasks). Empty ``{}`` when the split has nothing to score.
    """
    model.eval()
    graphs = exp.graphs(split)[:limit] if limit is not None else exp.graphs(split)
    if not graphs:
        return {}
    classes = exp.dataset.num_classes
    sbm = SBMAccuracy(classes) if exp.weighted else None
    losses, correct, nodes = [], 0, 0
    for start in range(0, len(graphs), batch_size if not exp.transductive else len(graphs)):
        batch = exp.batch(graphs[start:start + batch_size], device)
        logits, labels = exp.labelled(batch, model(batch).float(), split)
        if labels.numel() == 0:
            continue
        if exp.weighted:
            losses.append(float(weighted_cross_entropy(logits, labels, classes)))
            sbm.update(logits, labels)
        else:
            losses.append(float(F.cross_entropy(logits, labels, reduction="sum")))
        correct += int((logits.argmax(1) == labels).sum())
        nodes += labels.numel()
    if nodes == 0:
        return {}
    metrics = {"loss": sum(losses) / len(losses) if exp.weighted else sum(losses) / nodes, "acc": correct / nodes}
    if exp.weighted:
        metrics.update(class_weighted_acc=sbm.batch_mean(), class_weighted_acc_pooled=sbm.pooled(),
                       batch_size=batch_size)
    metrics.update(graphs=len(graphs), nodes=nodes)
    return metrics


def evaluate_node_checkpoint(ckpt: dict, path, split: str = "test", *, limit: int | None = None) -> dict:
    """:func:`evaluate_checkpoint` of a node task's checkpoint: :func:`evaluate_nodes` on ``split`` of
    the graphs its config loads, with batches of its training batch size (``data.batch_size``)."""
    model, cfg, info, _ = trained_nodes_from_checkpoint(ckpt, path)
    exp = build_node_experiment(cfg)
    if graph_data_info(exp.dataset) != info:
        raise CheckpointError(f"{path}: was trained on {info}, but its config now loads "
                              f"{graph_data_info(exp.dataset)}; the data changed since")
    if limit is not None and exp.transductive:
        raise ValueError(f"--limit: {exp.dataset.name} is one graph whose masks make the splits; evaluate the "
                         f"whole split")
    if not exp.graphs(split):
        raise ValueError(f"split {split!r} of {path} has no graphs to evaluate")
    start = time.time()
    metrics = evaluate_nodes(model, exp, split, batch_size=cfg.data.batch_size, limit=limit)
    if not metrics:
        raise ValueError(f"split {split!r} of {path} has no labelled nodes to evaluate")
    return {"checkpoint": str(path), "hypotheses": None,
            "metrics": {"split": split, **metrics, "eval_time_s": time.time() - start}}
