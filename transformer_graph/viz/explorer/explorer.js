/* The attention explorer (transformer_graph.viz.html).
 *
 * Reads the JSON in #tgx-data and draws one of four views as SVG: a heatmap of one
 * kind x layer x head (or the mean over heads), an overview of every layer and head,
 * the attention graph (the structure's real key -> query edges, opacity and width =
 * weight) and, for a Universal Transformer, the ACT steps per position. Every figure
 * carries its own <style>, so the SVG/PNG exports look like the page. No libraries,
 * no network: the page's Content-Security-Policy forbids any request.
 *
 * Data (PAGE_FORMAT transformer_graph/explorer/1): frames[f].kinds[kind] has
 * rows (queries) x cols (keys), edges ("0"/"1" per cell, row-major), layers (the
 * model's layer indices shown) and weights[layer position][head] (row-major floats).
 *
 * A node classifier's page has one kind, "node", given as edge lists: src/dst (key ->
 * query, the model's edge order) and weights[layer position][head][edge]; frames[f].graph
 * holds the nodes (names, pos: x, y per node with y up, labels, preds, scored: the split's
 * nodes, colours per class, top_k: in-edges drawn per node by default, 0 = all). Its graph
 * view draws the graph with those positions (nodeGraphSvg); graphs of up to DENSE_NODES
 * nodes are also made dense here, so the heatmap and overview views work unchanged.
 */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("tgx-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
  const KIND_ORDER = ["enc", "dec", "cross", "node"];
  const KIND_NAMES = {enc: "encoder self-attention", dec: "decoder self-attention",
                      cross: "encoder\u2013decoder (cross) attention", node: "self-attention on the graph"};
  const KIND_SHORT = {enc: "encoder self", dec: "decoder self", cross: "cross", node: "graph"};
  const DENSE_NODES = 64;            // node graphs up to this size also get heatmaps (N x N cells)
  const WRONG = "#d62728", GLOBAL = "#7f7f7f";
  const TOP_K_CHOICES = [1, 2, 3, 5, 10];
  const MISSING = "#d9d9d9";         // a node pair with no edge in the structure
  const EDGE = "#2457c5";
  // matplotlib's viridis at 0, 0.1, ..., 1 (perceptually uniform; the PNG figures use it too).
  const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884",
                   "#44bf70", "#7ad151", "#bddf26", "#fde725"].map(h => [1, 3, 5].map(i => parseInt(h.substr(i, 2), 16)));
  const FIGURE_CSS = "text{font-family:" + FONT + ";fill:#1d1f23}.muted{fill:#5d6470}" +
    ".edge.dim{stroke-opacity:.035}.edge.hl{stroke:#d62728}.node.hl text,.node.nb text,.lbl.hl{font-weight:700}" +
    ".node.hl text,.lbl.hl{fill:#d62728}.node.hl circle{fill:#d62728}.thumb.current .frame{stroke:#2457c5;stroke-width:3}" +
    ".node.sel .shape{stroke:#1d1f23;stroke-width:3.5}.node.sel text{font-weight:700}";

  const frames = DATA.frames;
  frames.forEach(f => { if (f.kinds.node) prepareNodeKind(f.kinds.node); });
  const kindsAvail = KIND_ORDER.filter(k => frames.some(f => f.kinds[k]));
  const hasAct = frames.some(f => f.act);
  const universal = DATA.model && DATA.model.kind === "universal";
  const layerWord = universal ? "step" : "layer";
  // A node page opens on its graph; heatmaps only where the N x N cells stay few enough to draw.
  const nodePage = kindsAvail.includes("node");
  const nodeDense = frames.every(f => !f.kinds.node || f.kinds.node.dense);
  const VIEWS = nodePage
    ? [["graph", "Graph", "g"]].concat(nodeDense ? [["heatmap", "Heatmap", "h"], ["overview", "Overview", "o"]] : [])
    : [["heatmap", "Heatmap", "h"], ["overview", "Overview", "o"], ["graph", "Graph", "g"]]
      .concat(hasAct ? [["act", "ACT steps", "a"]] : []);

  const state = {view: nodePage ? "graph" : "heatmap", frame: frames.length - 1,
                 kind: kindsAvail.includes("cross") ? "cross" : kindsAvail[0],
                 layer: 0, head: nodePage && frames[frames.length - 1].kinds.node.heads > 1 ? "mean" : 0,
                 scale: nodePage ? "max" : "unit", pin: null, playing: null,
                 topk: nodePage ? String(frames[frames.length - 1].graph.top_k || "all") : "all"};

  const $ = id => document.getElementById(id);
  const figure = $("figure"), tooltip = $("tooltip"), readout = $("readout");

  // ---------------------------------------------------------------- node graphs: edge lists
  /** Keep the edge lists (k.ew[layer position][head][edge]) and each node's in-edges; for a small
   *  graph add the dense form (k.edges, k.weights row-major) the heatmap and overview read. */
  function prepareNodeKind(k) {
    k.ew = k.weights;
    k.inEdges = Array.from({length: k.rows}, () => []);
    k.src.forEach((s, e) => k.inEdges[k.dst[e]].push(e));
    k.dense = k.rows <= DENSE_NODES;
    if (!k.dense) { k.weights = null; return; }
    const cells = new Array(k.rows * k.cols).fill("0");
    k.src.forEach((s, e) => { cells[k.dst[e] * k.cols + s] = "1"; });
    k.edges = cells.join("");
    k.weights = k.ew.map(layer => layer.map(hw => {
      const m = new Array(k.rows * k.cols).fill(0);
      hw.forEach((w, e) => { m[k.dst[e] * k.cols + k.src[e]] += w; });
      return m;
    }));
  }
  /** Per-edge weights of one layer position and head ("mean": average over heads). */
  function edgeWeights(k, li, head) {
    const w = k.ew[li];
    if (head !== "mean") return w[head];
    const out = new Array(k.src.length).fill(0);
    for (const hw of w) for (let e = 0; e < out.length; e++) out[e] += hw[e];
    return out.map(x => x / w.length);
  }
  /** Edges to draw (self loops aside: rings), weakest first: all, or each receiver's top k. */
  function drawnEdges(k, w, topk) {
    let chosen = [];
    for (const list of k.inEdges) {
      const others = list.filter(e => k.src[e] !== k.dst[e]);
      if (topk) others.sort((a, b) => w[b] - w[a] || a - b);
      chosen = chosen.concat(topk ? others.slice(0, topk) : others);
    }
    return chosen.sort((a, b) => w[a] - w[b] || a - b);
  }
  function selfWeights(k, w) {
    const out = new Array(k.rows).fill(null);
    k.src.forEach((s, e) => { if (s === k.dst[e]) out[s] = (out[s] || 0) + w[e]; });
    return out;
  }
  function nodeDesc(f, i) {
    const g = f.graph;
    if (i >= g.nodes) return "global node " + g.names[i];
    const right = g.preds[i] === g.labels[i];
    return "node " + g.names[i] + " (class " + g.labels[i] + ", predicted " + g.preds[i] + (right ? "" : " \u2717") +
      (g.transductive && g.scored[i] !== "1" ? ", not in the " + g.split + " split" : "") + ")";
  }

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs, parent, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function html(tag, attrs, parent, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  const measurer = document.createElement("canvas").getContext("2d");
  function textWidth(s, size, weight) {
    measurer.font = (weight || "normal") + " " + size + "px " + FONT;
    return measurer.measureText(s).width;
  }
  function maxWidth(list, size) { return list.reduce((m, s) => Math.max(m, textWidth(s, size)), 0); }
  const short = s => (s.length > 18 ? s.slice(0, 17) + "\u2026" : s);
  const fmt = w => String(Number(w.toPrecision(6)));
  const tick = w => String(Number(w.toPrecision(3)));
  const BAR_W = 12 + 4 + 50 + 10;   // colour bar, gap, widest tick label ("0.000123"), margin
  const clamp = (x, lo, hi) => Math.max(lo, Math.min(hi, x));
  function colour(t) {
    const x = clamp(t, 0, 1) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    const a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return "rgb(" + [0, 1, 2].map(c => Math.round(a[c] + (b[c] - a[c]) * f)).join(",") + ")";
  }
  function paneWidth() { return Math.max(320, $("pane").clientWidth - 16); }
  function paneHeight() { return Math.max(400, window.innerHeight - $("pane").getBoundingClientRect().top - 24); }

  function frame() { return frames[state.frame]; }
  function kindData(f, kind) { return (f || frame()).kinds[kind || state.kind]; }
  const rowTokens = (f, kind) => (kind === "node" ? f.graph.names : kind === "enc" ? f.src : f.tgt);   // queries
  const colTokens = (f, kind) => (kind === "node" ? f.graph.names : kind === "dec" ? f.tgt : f.src);   // keys
  function headList(k) { return k.heads > 1 ? [...Array(k.heads).keys(), "mean"] : [0]; }
  function headName(h) { return h === "mean" ? "mean over heads" : "head " + h; }

  /** Weights of one layer position and head ("mean": average over heads), row-major. */
  function matrix(k, li, head) {
    const w = k.weights[li];
    if (head !== "mean") return w[head];
    const out = new Array(k.rows * k.cols).fill(0);
    for (const hw of w) for (let i = 0; i < out.length; i++) out[i] += hw[i];
    return out.map(x => x / w.length);
  }
  function viewMax(k, w) {
    if (state.scale !== "max") return 1;
    let m = 0;
    for (let i = 0; i < w.length; i++) if (k.edges[i] === "1" && w[i] > m) m = w[i];
    return m > 0 ? m : 1;
  }
  function edgeCount(k) {
    if (k.src) return k.src.length;
    let n = 0;
    for (const c of k.edges) if (c === "1") n++;
    return n;
  }
  function queryDesc(f, kind, q) {
    if (kind === "node") return nodeDesc(f, q);
    return kind === "enc" ? "source token " + q + " \u201c" + f.src[q] + "\u201d"
      : "target node " + q + " (fed \u201c" + f.tgt[q] + "\u201d, predicts \u201c" + f.tgt_out[q] + "\u201d)";
  }
  function keyDesc(f, kind, k) {
    if (kind === "node") return nodeDesc(f, k);
    return (kind === "dec" ? "target node " + k + " \u201c" + f.tgt[k] : "source token " + k + " \u201c" + f.src[k]) + "\u201d";
  }
  function figTitle(k, li) {
    return KIND_NAMES[state.kind] + " \u00b7 " + layerWord + " " + k.layers[li] + " \u00b7 " + headName(state.head) +
      (frames.length > 1 ? " \u00b7 " + frame().label : "");
  }
  function newSvg(w, h, title) {
    w = Math.ceil(Math.max(w, textWidth(title, 14, 600) + 24));
    h = Math.ceil(h);
    const svg = el("svg", {xmlns: NS, width: w, height: h, viewBox: "0 0 " + w + " " + h, "font-size": 12});
    el("style", {}, svg, FIGURE_CSS);
    el("rect", {x: 0, y: 0, width: w, height: h, fill: "#ffffff"}, svg);
    el("text", {x: 10, y: 20, "font-size": 14, "font-weight": 600}, svg, title);
    return svg;
  }
  function colourBar(svg, x, y, height, vmax) {
    const g = el("g", {class: "colourbar"}, svg);
    const steps = 24;
    for (let i = 0; i < steps; i++) {
      el("rect", {x: x, y: y + height * (1 - (i + 1) / steps), width: 12, height: height / steps + 0.5,
                  fill: colour((i + 0.5) / steps)}, g);
    }
    el("rect", {x: x, y: y, width: 12, height: height, fill: "none", stroke: "#888", "stroke-width": 0.5}, g);
    for (const t of [0, 0.5, 1]) {
      el("text", {x: x + 16, y: y + height * (1 - t), "dominant-baseline": "central", "font-size": 11}, g, tick(t * vmax));
    }
    el("text", {x: x, y: y + height + 16, "font-size": 11, class: "muted"}, g, "weight");
    el("rect", {x: x, y: y + height + 26, width: 12, height: 12, fill: MISSING}, g);
    el("text", {x: x + 16, y: y + height + 32, "dominant-baseline": "central", "font-size": 11, class: "muted"}, g, "no edge");
  }

  // ---------------------------------------------------------------- heatmap
  function heatmapSvg(f, kind, li, head) {
    const k = kindData(f, kind), R = k.rows, C = k.cols, w = matrix(k, li, head), vmax = viewMax(k, w);
    const rows = rowTokens(f, kind).map(short), cols = colTokens(f, kind).map(short);
    const guess = 40 + maxWidth(rows, 12) + 90;
    // As large as fits the pane's width and the window's height, never below legible (14 px).
    const cell = clamp(Math.floor(Math.min((paneWidth() - guess) / C, (paneHeight() - 150) / R)), 14, 34);
    const fs = clamp(cell - 3, 10, 13);
    const angle = cell >= 22 ? 60 : 90, rad = angle * Math.PI / 180;
    const rowW = maxWidth(rows, fs), colW = maxWidth(cols, fs);
    const left = 30 + rowW + 8, top = 52 + colW * Math.sin(rad) + fs;
    const right = Math.max(left + C * cell + 14 + BAR_W, left + (C - 0.5) * cell + colW * Math.cos(rad) + fs);
    const barH = clamp(R * cell, 90, 240);
    const svg = newSvg(right + 10, top + Math.max(R * cell, barH + 40) + 20, figTitle(k, li));
    svg.setAttribute("data-view", "heatmap");
    const names = {enc: ["source (query)", "source (key)"], dec: ["target (query)", "target (key)"],
                   cross: ["target (query)", "source (key)"], node: ["node (query, receives)", "node (key, sends)"]}[kind];
    el("text", {x: left + C * cell / 2, y: 40, "text-anchor": "middle", class: "muted"}, svg, names[1]);
    el("text", {x: 14, y: top + R * cell / 2, "text-anchor": "middle", class: "muted",
                transform: "rotate(-90 14 " + (top + R * cell / 2) + ")"}, svg, names[0]);
    const cells = el("g", {class: "cells"}, svg);
    for (let q = 0; q < R; q++) {
      for (let c = 0; c < C; c++) {
        const i = q * C + c, present = k.edges[i] === "1";
        el("rect", {class: "cell", x: left + c * cell, y: top + q * cell, width: cell, height: cell,
                    fill: present ? colour(w[i] / vmax) : MISSING, stroke: "#ffffff", "stroke-width": 0.5,
                    "data-q": q, "data-k": c, "data-w": String(w[i]), "data-edge": present ? 1 : 0}, cells);
      }
    }
    const labels = el("g", {"font-size": fs}, svg);
    rows.forEach((s, q) => el("text", {class: "lbl row", "data-i": q, x: left - 6, y: top + q * cell + cell / 2,
                                       "text-anchor": "end", "dominant-baseline": "central"}, labels, s));
    cols.forEach((s, c) => {
      const x = left + c * cell + cell / 2, y = top - 6;
      el("text", {class: "lbl col", "data-i": c, x: x, y: y, "dominant-baseline": "central",
                  transform: "rotate(-" + angle + " " + x + " " + y + ")"}, labels, s);
    });
    colourBar(svg, left + C * cell + 14, top, barH, vmax);
    return svg;
  }

  // ---------------------------------------------------------------- overview
  function overviewSvg(f, kind) {
    const k = kindData(f, kind), heads = headList(k), n = Math.max(k.rows, k.cols);
    const left = 70, top = 56, gap = 14;
    const side = clamp(Math.floor((paneWidth() - left - 10) / heads.length) - gap, 56, 170);
    const cell = side / n, stepX = k.cols * cell + gap, stepY = k.rows * cell + gap;
    const title = KIND_NAMES[kind] + ": every " + layerWord + " and head (click one to open it)" +
      (frames.length > 1 ? " \u00b7 " + f.label : "");
    const svg = newSvg(left + heads.length * stepX + 10, top + k.layers.length * stepY + 10, title);
    svg.setAttribute("data-view", "overview");
    heads.forEach((h, j) => el("text", {x: left + j * stepX + k.cols * cell / 2, y: top - 8, "text-anchor": "middle",
                                        class: "muted"}, svg, h === "mean" ? "mean" : "head " + h));
    k.layers.forEach((layer, li) => {
      const y0 = top + li * stepY;
      el("text", {x: left - 10, y: y0 + k.rows * cell / 2, "text-anchor": "end", "dominant-baseline": "central",
                  class: "muted"}, svg, layerWord + " " + layer);
      heads.forEach((h, j) => {
        const w = matrix(k, li, h), vmax = viewMax(k, w);
        const x0 = left + j * stepX;
        const current = li === state.layer && h === state.head;
        const g = el("g", {class: "thumb" + (current ? " current" : ""), "data-layer": li, "data-head": h,
                           transform: "translate(" + x0 + " " + y0 + ")"}, svg);
        el("title", {}, g, layerWord + " " + layer + ", " + headName(h));
        for (let q = 0; q < k.rows; q++) {
          for (let c = 0; c < k.cols; c++) {
            const i = q * k.cols + c;
            el("rect", {x: c * cell, y: q * cell, width: cell + 0.3, height: cell + 0.3,
                        fill: k.edges[i] === "1" ? colour(w[i] / vmax) : MISSING}, g);
          }
        }
        el("rect", {class: "frame", x: -1, y: -1, width: k.cols * cell + 2, height: k.rows * cell + 2,
                    fill: "none", stroke: "#c4c9d2", "stroke-width": 1}, g);
      });
    });
    return svg;
  }

  // ---------------------------------------------------------------- graph
  function graphSvg(f, kind, li, head) {
    const k = kindData(f, kind), R = k.rows, C = k.cols, w = matrix(k, li, head), vmax = viewMax(k, w);
    const keys = colTokens(f, kind).map(short), queries = rowTokens(f, kind).map(short);
    const n = Math.max(R, C), dy = n > 30 ? 17 : 20, fs = 12;
    const keyW = maxWidth(keys, fs), qW = maxWidth(queries, fs);
    const gap = clamp(paneWidth() - keyW - qW - 60, 200, 420);
    const xL = 16 + keyW + 10, xR = xL + gap, top = 58;
    const offK = (n - C) * dy / 2, offQ = (n - R) * dy / 2;
    const yK = i => top + offK + i * dy + dy / 2, yQ = i => top + offQ + i * dy + dy / 2;
    const heads = kind === "cross" ? ["source (keys, send)", "target (queries, receive)"]
      : kind === "enc" ? ["source token as key (sends)", "source token as query (receives)"]
        : ["target node as key (sends)", "target node as query (receives)"];
    const headW = textWidth(heads[0], 12) + textWidth(heads[1], 12) + 40;
    const svg = newSvg(Math.max(xR + 10 + qW + 16, headW), top + n * dy + 24, figTitle(k, li));
    svg.setAttribute("data-view", "graph");
    // Column headings flush with the figure's edges (a label can be wider than its column).
    const width = Number(svg.getAttribute("width"));
    el("text", {x: 10, y: 42, class: "muted"}, svg, heads[0]);
    el("text", {x: width - 10, y: 42, "text-anchor": "end", class: "muted"}, svg, heads[1]);
    const edges = el("g", {class: "edges", stroke: EDGE, "stroke-linecap": "round"}, svg);
    for (let q = 0; q < R; q++) {
      for (let c = 0; c < C; c++) {
        const i = q * C + c;
        if (k.edges[i] !== "1") continue;   // only the structure's real edges
        const t = clamp(w[i] / vmax, 0, 1);
        el("line", {class: "edge", x1: xL, y1: yK(c), x2: xR, y2: yQ(q), "stroke-opacity": (0.04 + 0.96 * t).toFixed(4),
                    "stroke-width": (0.4 + 4 * t).toFixed(3), "data-q": q, "data-k": c, "data-w": String(w[i])}, edges);
      }
    }
    const nodes = el("g", {"font-size": fs}, svg);
    function node(side, i, x, y, label, anchor) {
      const g = el("g", {class: "node", "data-side": side, "data-i": i}, nodes);
      const tw = textWidth(label, fs);
      el("rect", {x: anchor === "end" ? x - tw - 12 : x - 4, y: y - dy / 2, width: tw + 16, height: dy,
                  fill: "#ffffff", "fill-opacity": 0}, g);
      el("circle", {cx: x, cy: y, r: 3.5, fill: EDGE}, g);
      el("text", {x: anchor === "end" ? x - 8 : x + 8, y: y, "text-anchor": anchor, "dominant-baseline": "central"}, g, label);
    }
    keys.forEach((s, i) => node("key", i, xL, yK(i), s, "end"));
    queries.forEach((s, i) => node("query", i, xR, yQ(i), s, "start"));
    return svg;
  }

  /** Highlight the edges of one node (side "key": its out-edges, "query": its in-edges), dim the rest. */
  function highlight(side, i) {
    const svg = figure.querySelector("svg[data-view=graph]");
    if (!svg) return;
    if (svg.getAttribute("data-layout") === "nodes") { nodeHighlight(svg, side === null ? null : i); return; }
    const attr = side === "key" ? "data-k" : "data-q", other = side === "key" ? "data-q" : "data-k";
    const mine = [];
    svg.querySelectorAll(".edge").forEach(e => {
      const on = side !== null && e.getAttribute(attr) === String(i);
      e.classList.toggle("hl", on);
      e.classList.toggle("dim", side !== null && !on);
      if (on) mine.push([e.getAttribute(other), Number(e.getAttribute("data-w"))]);
    });
    // Neighbours in bold: those whose edge carries more than a uniform share of the node's weight.
    const total = mine.reduce((a, [, w]) => a + w, 0);
    const neighbours = new Set(mine.filter(([, w]) => w > total / mine.length).map(([j]) => j));
    svg.querySelectorAll(".node").forEach(g => {
      const mine = side !== null && g.getAttribute("data-side") === side && g.getAttribute("data-i") === String(i);
      g.classList.toggle("hl", mine);
      g.classList.toggle("nb", side !== null && g.getAttribute("data-side") !== side && neighbours.has(g.getAttribute("data-i")));
    });
  }
  function describeNode(side, i) {
    const f = frame(), k = kindData(), w = matrix(k, state.layer, state.head), list = [];
    for (let j = 0; j < (side === "key" ? k.rows : k.cols); j++) {
      const idx = side === "key" ? j * k.cols + i : i * k.cols + j;
      if (k.edges[idx] === "1") list.push([j, w[idx]]);
    }
    list.sort((a, b) => b[1] - a[1]);
    const who = side === "key" ? keyDesc(f, state.kind, i) : queryDesc(f, state.kind, i);
    readout.replaceChildren();
    html("div", {}, readout, who + (side === "key" ? " sends on " : " receives on ") + list.length + " edge(s); strongest:");
    const ol = html("ol", {}, readout);
    for (const [j, v] of list.slice(0, 6)) {
      const li = html("li", {}, ol, (side === "key" ? queryDesc(f, state.kind, j) : keyDesc(f, state.kind, j)) + ": ");
      html("span", {class: "w"}, li, fmt(v));
    }
  }

  // ---------------------------------------------------------------- node graph (its own layout)
  /** The graph at its positions: edge j -> i is the half of the line i-j at i (what i takes from j),
   *  the ring around a node its self-loop weight, fill = true class, red outline = wrong prediction,
   *  faded = not in the split (transductive tasks), squares = global nodes. */
  function nodeGraphSvg(f, li, head) {
    const k = kindData(f, "node"), g = f.graph, n = k.rows, w = edgeWeights(k, li, head);
    const topk = state.topk === "all" ? 0 : Number(state.topk);
    const drawn = drawnEdges(k, w, topk), loops = selfWeights(k, w);
    let vmax = 1;
    if (state.scale === "max") {
      vmax = 0;
      for (const e of drawn) vmax = Math.max(vmax, w[e]);
      for (const x of loops) if (x !== null) vmax = Math.max(vmax, x);
      vmax = vmax > 0 ? vmax : 1;
    }
    const xs = [], ys = [];
    for (let i = 0; i < n; i++) { xs.push(g.pos[2 * i]); ys.push(g.pos[2 * i + 1]); }
    const x0 = Math.min(...xs), y1 = Math.max(...ys);
    const spanX = Math.max(Math.max(...xs) - x0, 1e-9), spanY = Math.max(y1 - Math.min(...ys), 1e-9);
    const legendW = 200, pad = 18, top = 40;
    const r = n <= 60 ? 9 : n <= 500 ? 5 : 2.5;
    // Fit the pane without scroll bars: its height is at most the window's less the toolbar (explorer.css),
    // and 32 px stay free for the vertical scroll bars the page and the pane may show once it is drawn.
    const plotW = clamp(paneWidth() - legendW - 2 * pad - 2 * r - 32, 300, 1600);
    const plotH = Math.min(paneHeight(), window.innerHeight - 136) - top - 2 * pad - 2 * r - 16;
    const scale = Math.min(plotW / spanX, Math.max(260, plotH) / spanY);
    const X = i => pad + r + (xs[i] - x0) * scale, Y = i => top + pad + r + (y1 - ys[i]) * scale;
    const width = 2 * pad + 2 * r + spanX * scale + legendW, height = top + 2 * pad + 2 * r + spanY * scale + 10;
    const title = figTitle(k, li) + (topk ? " \u00b7 top " + topk + " in-edge(s) per node" : "");
    const svg = newSvg(width, Math.max(height, 260), title);
    svg.setAttribute("data-view", "graph");
    svg.setAttribute("data-layout", "nodes");
    const small = n <= 60;
    const edges = el("g", {class: "edges", stroke: EDGE, "stroke-linecap": "butt"}, svg);
    for (const e of drawn) {
      const q = k.dst[e], s = k.src[e], t = clamp(w[e] / vmax, 0, 1);
      el("line", {class: "edge", x1: X(q), y1: Y(q), x2: (X(q) + X(s)) / 2, y2: (Y(q) + Y(s)) / 2,
                  "stroke-opacity": ((small ? 0.06 : 0.03) + (small ? 0.94 : 0.6) * t).toFixed(4),
                  "stroke-width": (0.4 + (small ? 4 : 2) * t).toFixed(3), "data-q": q, "data-k": s, "data-w": String(w[e])}, edges);
    }
    el("g", {class: "focus", stroke: "#d62728", "stroke-linecap": "round"}, svg);   // a node's in-edges, drawn on hover
    const nodes = el("g", {"font-size": 9}, svg);
    for (let i = 0; i < n; i++) {
      const node = el("g", {class: "node", "data-side": "node", "data-i": i}, nodes);
      if (loops[i] !== null) {
        const t = clamp(loops[i] / vmax, 0, 1);
        el("circle", {class: "selfloop", cx: X(i), cy: Y(i), r: r + (small ? 3 : 1.5), fill: "none", stroke: EDGE,
                      "stroke-opacity": (0.25 + 0.75 * t).toFixed(3), "stroke-width": (0.5 + (small ? 3.5 : 1.5) * t).toFixed(3),
                      "data-w": String(loops[i])}, node);
      }
      if (i >= g.nodes) {
        el("rect", {class: "shape", x: X(i) - r, y: Y(i) - r, width: 2 * r, height: 2 * r, fill: GLOBAL,
                    stroke: "#1d1f23", "stroke-width": 1}, node);
      } else {
        const wrong = g.preds[i] !== g.labels[i], scored = g.scored[i] === "1";
        el("circle", {class: "shape" + (wrong ? " wrong" : ""), cx: X(i), cy: Y(i), r: r,
                      fill: g.colours[g.labels[i] % g.colours.length], "fill-opacity": scored ? 1 : 0.3,
                      stroke: wrong ? WRONG : scored ? "#1d1f23" : "#9a9a9a", "stroke-width": wrong ? 2.5 : 1}, node);
      }
      if (small) el("text", {x: X(i), y: Y(i), "text-anchor": "middle", "dominant-baseline": "central"}, node, g.names[i]);
    }
    nodeLegend(svg, f, width - legendW + 10, top + 10);
    return svg;
  }
  function nodeLegend(svg, f, x, y) {
    const g = f.graph, lg = el("g", {class: "legend", "font-size": 11}, svg);
    const row = (draw, label) => { draw(y); el("text", {x: x + 20, y: y, "dominant-baseline": "central"}, lg, label); y += 18; };
    g.colours.forEach((c, i) => row(yy => el("circle", {cx: x + 7, cy: yy, r: 6, fill: c, stroke: "#1d1f23"}, lg), "class " + i));
    row(yy => el("circle", {cx: x + 7, cy: yy, r: 6, fill: "#ffffff", stroke: WRONG, "stroke-width": 2.5}, lg), "prediction wrong");
    if (g.transductive) {
      row(yy => el("circle", {cx: x + 7, cy: yy, r: 6, fill: "#888", "fill-opacity": 0.3, stroke: "#9a9a9a"}, lg),
          "not in the " + g.split + " split");
    }
    if (g.global) row(yy => el("rect", {x: x + 1, y: yy - 6, width: 12, height: 12, fill: GLOBAL, stroke: "#1d1f23"}, lg), "global node");
    row(yy => el("line", {x1: x, x2: x + 14, y1: yy, y2: yy, stroke: EDGE, "stroke-width": 3}, lg), "half at i: weight j \u2192 i");
    row(yy => el("circle", {cx: x + 7, cy: yy, r: 6, fill: "none", stroke: EDGE, "stroke-width": 2}, lg), "ring: self-loop weight");
    row(yy => el("line", {x1: x, x2: x + 14, y1: yy, y2: yy, stroke: "#d62728", "stroke-width": 3}, lg), "hovered node's in-edges");
    const [right, total] = nodeScore(g);
    el("text", {x: x, y: y + 10, class: "muted"}, lg, right + " / " + total + " " + g.split + " nodes right");
  }
  function nodeScore(g) {
    let right = 0, total = 0;
    for (let i = 0; i < g.nodes; i++) if (g.scored[i] === "1") { total++; if (g.preds[i] === g.labels[i]) right++; }
    return [right, total];
  }
  /** Node i's in-edges, all of them (whatever the top-k), as full red lines from each sender;
   *  every other edge dims. i null: back to the plain picture. */
  function nodeHighlight(svg, i) {
    const focus = svg.querySelector("g.focus");
    focus.replaceChildren();
    svg.querySelectorAll("g.edges line.edge").forEach(e => e.classList.toggle("dim", i !== null));
    svg.querySelectorAll(".node").forEach(g => g.classList.remove("sel", "nb"));
    if (i === null) return;
    const k = kindData(), w = edgeWeights(k, state.layer, state.head);
    const mine = k.inEdges[i].filter(e => k.src[e] !== i), small = k.rows <= 60;
    const top = Math.max(1e-12, ...mine.map(e => w[e]));
    const pos = j => svg.querySelector('.node[data-i="' + j + '"] .shape');
    const centre = s => s.tagName === "rect" ? [Number(s.getAttribute("x")) + Number(s.getAttribute("width")) / 2,
                                               Number(s.getAttribute("y")) + Number(s.getAttribute("height")) / 2]
      : [Number(s.getAttribute("cx")), Number(s.getAttribute("cy"))];
    const [xi, yi] = centre(pos(i));
    const total = mine.reduce((a, e) => a + w[e], 0);
    for (const e of mine.slice().sort((a, b) => w[a] - w[b])) {
      const [xj, yj] = centre(pos(k.src[e])), t = w[e] / top;
      el("line", {class: "edge hl", x1: xj, y1: yj, x2: xi, y2: yi, "stroke-opacity": (0.2 + (small ? 0.8 : 0.5) * t).toFixed(3),
                  "stroke-width": (0.6 + (small ? 3.5 : 1.6) * t).toFixed(3), "data-q": i, "data-k": k.src[e], "data-w": String(w[e])}, focus);
      if (w[e] > total / mine.length) svg.querySelector('.node[data-i="' + k.src[e] + '"]').classList.add("nb");
    }
    svg.querySelector('.node[data-i="' + i + '"]').classList.add("sel");
  }
  function describeGraphNode(i) {
    const f = frame(), k = kindData(), w = edgeWeights(k, state.layer, state.head);
    const list = k.inEdges[i].map(e => [k.src[e], w[e]]).sort((a, b) => b[1] - a[1]);
    readout.replaceChildren();
    html("div", {}, readout, nodeDesc(f, i) + " receives on " + list.length + " edge(s); strongest:");
    const ol = html("ol", {}, readout);
    for (const [j, v] of list.slice(0, 8)) {
      const li = html("li", {}, ol, (j === i ? "itself (self loop)" : nodeDesc(f, j)) + ": ");
      html("span", {class: "w"}, li, fmt(v));
    }
  }

  // ---------------------------------------------------------------- ACT steps
  function actSvg(f) {
    const act = f.act || {}, sides = ["enc", "dec"].filter(s => act[s]);
    const depth = (DATA.model && DATA.model.max_depth) || Math.max(1, ...sides.map(s => Math.max(...act[s])));
    const n = Math.max(...sides.map(s => act[s].length));
    const bar = clamp(Math.floor((paneWidth() - 80) / n), 14, 34), fs = clamp(bar - 3, 10, 12);
    const plotH = 150, left = 50;
    const panels = sides.map(s => {
      const tokens = (s === "enc" ? f.src : f.tgt).map(short);
      return {side: s, tokens: tokens, labelH: maxWidth(tokens, fs) * Math.sin(Math.PI / 3) + 14};
    });
    const height = panels.reduce((h, p) => h + 48 + plotH + p.labelH + 10, 40);
    const title = "ACT steps per position (max depth " + depth + ")" + (frames.length > 1 ? " \u00b7 " + f.label : "");
    const svg = newSvg(left + n * bar + 40, height, title);
    svg.setAttribute("data-view", "act");
    let y0 = 40;
    for (const p of panels) {
      const steps = act[p.side], mean = steps.reduce((a, b) => a + b, 0) / steps.length;
      el("text", {x: left, y: y0 + 16, "font-weight": 600}, svg,
         (p.side === "enc" ? "encoder: source tokens" : "decoder: target nodes") + " (mean " + mean.toFixed(2) + " steps)");
      const base = y0 + 42 + plotH;   // room for the panel title and the value above a full bar
      for (let t = 0; t <= depth; t += Math.max(1, Math.ceil(depth / 4))) {
        const y = base - plotH * t / depth;
        el("line", {x1: left - 4, x2: left + steps.length * bar, y1: y, y2: y, stroke: "#e3e6eb"}, svg);
        el("text", {x: left - 8, y: y, "text-anchor": "end", "dominant-baseline": "central", "font-size": 11,
                    class: "muted"}, svg, String(t));
      }
      steps.forEach((s, i) => {
        const h = plotH * s / depth, x = left + i * bar;
        el("rect", {class: "act-bar", "data-side": p.side, "data-i": i, "data-steps": s, x: x + 1, y: base - h,
                    width: bar - 2, height: h, fill: colour(s / depth)}, svg);
        el("text", {x: x + bar / 2, y: base - h - 5, "text-anchor": "middle", "font-size": 10}, svg, String(s));
        const lx = x + bar / 2, ly = base + 8;
        el("text", {x: lx, y: ly, "font-size": fs, "text-anchor": "end", "dominant-baseline": "central",
                    transform: "rotate(-60 " + lx + " " + ly + ")"}, svg, p.tokens[i]);
      });
      y0 = base + p.labelH + 10;
    }
    return svg;
  }
  function actSummary() {
    const f = frame(), box = $("act-box");
    box.hidden = !f.act;
    if (!f.act) return;
    const parts = ["enc", "dec"].filter(s => f.act[s]).map(s => {
      const a = f.act[s];
      return (s === "enc" ? "encoder" : "decoder") + ": mean " + (a.reduce((x, y) => x + y, 0) / a.length).toFixed(2) +
        ", max " + Math.max(...a) + " steps";
    });
    $("act-summary").textContent = parts.join("; ") + (DATA.model.max_depth ? " (max depth " + DATA.model.max_depth + ")" : "");
  }

  // ---------------------------------------------------------------- controls
  function fixState() {
    const f = frame();
    if (!f.kinds[state.kind]) state.kind = KIND_ORDER.find(k => f.kinds[k]);
    const k = kindData();
    state.layer = clamp(state.layer, 0, k.layers.length - 1);
    if (state.head === "mean" ? k.heads < 2 : state.head >= k.heads) state.head = state.head === "mean" ? 0 : k.heads - 1;
    if (state.view === "act" && !f.act) state.view = "heatmap";
  }
  function fillSelect(select, items, current) {
    const values = items.map(it => String(it[0]));
    if (select.options.length !== items.length || [...select.options].some((o, i) => o.value !== values[i])) {
      select.replaceChildren(...items.map(([v, label]) => { const o = html("option", {value: v}); o.textContent = label; return o; }));
    }
    select.value = String(current);
  }
  function syncControls() {
    const k = kindData(), act = state.view === "act";
    for (const b of $("views").children) b.setAttribute("aria-selected", String(b.dataset.view === state.view));
    for (const b of $("kinds").children) {
      b.setAttribute("aria-selected", String(b.dataset.kind === state.kind));
      b.disabled = act || !frame().kinds[b.dataset.kind];
    }
    fillSelect($("layer"), k.layers.map((layer, li) => [li, layerWord + " " + layer]), state.layer);
    fillSelect($("head"), headList(k).map(h => [h, headName(h)]), state.head);
    $("layer").disabled = $("head").disabled = act;
    $("scale").value = state.scale;
    $("topk-group").hidden = !(state.kind === "node" && state.view === "graph");
    if (state.kind === "node") {
      const k0 = Number(frame().graph.top_k) || 0;
      const choices = [...new Set(TOP_K_CHOICES.concat(k0 ? [k0] : []))].sort((a, b) => a - b);
      fillSelect($("topk"), [["all", "all edges"]].concat(choices.map(c => [String(c), "top " + c + " per node"])), state.topk);
    }
    if (frames.length > 1 || DATA.frame_label) {
      $("frames").hidden = false;
      $("frame").max = String(frames.length - 1);
      $("frame").value = String(state.frame);
      $("frame").disabled = frames.length < 2;
      $("play").disabled = frames.length < 2;
      $("frame-label").textContent = frame().label || "";
    }
  }
  function render() {
    fixState();
    syncControls();
    const f = frame();
    const svg = state.view === "overview" ? overviewSvg(f, state.kind)
      : state.view === "graph" ? (state.kind === "node" ? nodeGraphSvg(f, state.layer, state.head)
        : graphSvg(f, state.kind, state.layer, state.head))
        : state.view === "act" ? actSvg(f) : heatmapSvg(f, state.kind, state.layer, state.head);
    figure.replaceChildren(svg);
    if (state.pin && state.view === "graph") highlight(state.pin.side, state.pin.i);
    if (state.pin && state.view === "graph" && state.pin.side === "node") describeGraphNode(state.pin.i);
    actSummary();
    modelBox();
  }
  function set(changes) {
    // A pinned node of a node graph stays pinned across layers and heads: comparing them is the point.
    const keep = state.kind === "node" && !("kind" in changes) && !("frame" in changes);
    if (!keep && ("kind" in changes || "frame" in changes || "layer" in changes || "head" in changes)) state.pin = null;
    Object.assign(state, changes);
    render();
  }
  function stepHead(d) {
    const list = headList(kindData()), i = list.indexOf(state.head);
    set({head: list[clamp(i + d, 0, list.length - 1)]});
  }
  function stepLayer(d) { set({layer: clamp(state.layer + d, 0, kindData().layers.length - 1)}); }
  function stepFrame(d) { set({frame: (state.frame + d + frames.length) % frames.length}); }
  function togglePlay() {
    if (state.playing) { clearInterval(state.playing); state.playing = null; } else if (frames.length > 1) {
      state.playing = setInterval(() => stepFrame(1), 800);
    }
    $("play").innerHTML = state.playing ? "&#10074;&#10074;" : "&#9654;";
  }

  function buildControls() {
    for (const [view, label, key] of VIEWS) {
      const b = html("button", {type: "button", role: "tab", "data-view": view, title: label + " (" + key + ")"}, $("views"), label);
      b.addEventListener("click", () => set({view: view}));
    }
    kindsAvail.forEach((kind, i) => {
      const b = html("button", {type: "button", role: "tab", "data-kind": kind, title: KIND_NAMES[kind] + " (" + (i + 1) + ")"},
                     $("kinds"), KIND_SHORT[kind]);
      b.addEventListener("click", () => set({kind: kind}));
    });
    $("layer-word").textContent = layerWord;
    $("layer").addEventListener("change", e => set({layer: Number(e.target.value)}));
    $("head").addEventListener("change", e => set({head: e.target.value === "mean" ? "mean" : Number(e.target.value)}));
    $("scale").addEventListener("change", e => set({scale: e.target.value}));
    $("topk").addEventListener("change", e => set({topk: e.target.value}));
    $("frame").addEventListener("input", e => set({frame: Number(e.target.value)}));
    $("play").addEventListener("click", togglePlay);
    $("export-png").addEventListener("click", exportPng);
    $("export-svg").addEventListener("click", exportSvg);
    document.addEventListener("keydown", onKey);
    figure.addEventListener("mouseover", onOver);
    figure.addEventListener("mousemove", e => placeTooltip(e));
    figure.addEventListener("mouseout", onOut);
    figure.addEventListener("click", onClick);
    let timer = null;
    window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(render, 150); });
  }
  function onKey(ev) {
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const tag = ev.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;  // their own arrow keys
    const views = VIEWS.map(v => v[2]);
    if (ev.key === "ArrowRight") stepHead(1);
    else if (ev.key === "ArrowLeft") stepHead(-1);
    else if (ev.key === "ArrowDown") stepLayer(1);
    else if (ev.key === "ArrowUp") stepLayer(-1);
    else if (["1", "2", "3"].includes(ev.key) && kindsAvail[Number(ev.key) - 1]) set({kind: kindsAvail[Number(ev.key) - 1]});
    else if (views.includes(ev.key)) set({view: VIEWS[views.indexOf(ev.key)][0]});
    else if (ev.key === "[" && frames.length > 1) stepFrame(-1);
    else if (ev.key === "]" && frames.length > 1) stepFrame(1);
    else if (ev.key === " " && tag !== "BUTTON" && frames.length > 1) togglePlay();
    else if (ev.key === "Escape") { state.pin = null; highlight(null, null); hideTooltip(); }
    else return;
    ev.preventDefault();
  }

  // ---------------------------------------------------------------- pointer
  function placeTooltip(e) {
    if (tooltip.hidden) return;
    const x = Math.min(e.clientX + 14, window.innerWidth - tooltip.offsetWidth - 6);
    const y = Math.min(e.clientY + 14, window.innerHeight - tooltip.offsetHeight - 6);
    tooltip.style.left = Math.max(0, x) + "px";
    tooltip.style.top = Math.max(0, y) + "px";
  }
  function showTooltip(text, e) { tooltip.textContent = text; tooltip.hidden = false; placeTooltip(e); }
  function hideTooltip() { tooltip.hidden = true; }
  function labelHl(q, c) {
    figure.querySelectorAll(".lbl").forEach(t => t.classList.toggle("hl",
      (t.classList.contains("row") && t.getAttribute("data-i") === String(q)) ||
      (t.classList.contains("col") && t.getAttribute("data-i") === String(c))));
  }
  function onOver(e) {
    const t = e.target.closest(".cell, .node, .thumb, .act-bar, .edge");
    if (!t) return;
    const f = frame();
    if (t.classList.contains("cell") || t.classList.contains("edge")) {
      const q = Number(t.getAttribute("data-q")), c = Number(t.getAttribute("data-k"));
      const present = t.classList.contains("edge") || t.getAttribute("data-edge") === "1";
      const w = Number(t.getAttribute("data-w"));
      const value = present ? "weight " + fmt(w) : "no edge in the structure";
      showTooltip(value, e);
      readout.replaceChildren();
      html("div", {}, readout, queryDesc(f, state.kind, q) + " \u2190 " + keyDesc(f, state.kind, c));
      html("div", {class: "w"}, readout, value);
      if (t.classList.contains("cell")) labelHl(q, c);
    } else if (t.classList.contains("node") && t.getAttribute("data-side") === "node") {
      const i = Number(t.getAttribute("data-i"));
      highlight("node", i);
      describeGraphNode(i);
      showTooltip(f.graph.names[i] + ": its in-edges", e);
    } else if (t.classList.contains("node")) {
      const side = t.getAttribute("data-side"), i = Number(t.getAttribute("data-i"));
      highlight(side, i);
      describeNode(side, i);
      const tokens = side === "key" ? colTokens(f, state.kind) : rowTokens(f, state.kind);
      showTooltip(tokens[i] + (side === "key" ? ": its out-edges" : ": its in-edges"), e);
    } else if (t.classList.contains("thumb")) {
      const k = kindData(), li = Number(t.getAttribute("data-layer")), h = t.getAttribute("data-head");
      showTooltip(layerWord + " " + k.layers[li] + ", " + headName(h === "mean" ? "mean" : Number(h)) + ": click to open", e);
    } else {
      const side = t.getAttribute("data-side"), i = Number(t.getAttribute("data-i"));
      const tokens = side === "enc" ? f.src : f.tgt;
      showTooltip("\u201c" + tokens[i] + "\u201d: " + t.getAttribute("data-steps") + " step(s)", e);
    }
  }
  function onOut(e) {
    const t = e.target.closest(".cell, .node, .thumb, .act-bar, .edge");
    if (!t || (e.relatedTarget && t.contains(e.relatedTarget))) return;
    hideTooltip();
    if (t.classList.contains("node")) {
      if (state.pin) highlight(state.pin.side, state.pin.i); else highlight(null, null);
      if (state.pin && state.pin.side === "node") describeGraphNode(state.pin.i);
    }
    if (t.classList.contains("cell")) labelHl(-1, -1);
  }
  function onClick(e) {
    const thumb = e.target.closest(".thumb");
    if (thumb) {
      const h = thumb.getAttribute("data-head");
      set({view: "heatmap", layer: Number(thumb.getAttribute("data-layer")), head: h === "mean" ? "mean" : Number(h)});
      hideTooltip();
      return;
    }
    const n = e.target.closest(".node");
    if (n) {
      const side = n.getAttribute("data-side"), i = Number(n.getAttribute("data-i"));
      state.pin = state.pin && state.pin.side === side && state.pin.i === i ? null : {side: side, i: i};
      if (state.pin) highlight(side, i);
    }
  }

  // ---------------------------------------------------------------- export
  function fileBase() {
    const k = kindData(), parts = [state.view];
    if (state.view !== "act") parts.push(state.kind);
    if (state.view === "heatmap" || state.view === "graph") {
      parts.push(layerWord + k.layers[state.layer], state.head === "mean" ? "mean" : "head" + state.head);
    }
    if (frames.length > 1) parts.push(frame().label.replace(/\s+/g, ""));
    return "attention_" + parts.join("_");
  }
  function svgText() {
    const svg = figure.querySelector("svg");
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(svg);
  }
  const svgUrl = text => "data:image/svg+xml;charset=utf-8," + encodeURIComponent(text);
  /** Hand a file to the user. A test (or a page embedding this one) may set window.tgxOnExport to
   *  receive (file name, data: URL) instead; a download goes through a blob: URL (no size limit). */
  function deliver(name, makeUrl, makeBlob) {
    if (typeof window.tgxOnExport === "function") { window.tgxOnExport(name, makeUrl()); return; }
    makeBlob(blob => {
      const url = URL.createObjectURL(blob), a = html("a", {href: url, download: name}, document.body);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }
  function exportSvg() {
    const text = svgText();
    deliver(fileBase() + ".svg", () => svgUrl(text), done => done(new Blob([text], {type: "image/svg+xml"})));
  }
  function exportPng() {
    const svg = figure.querySelector("svg"), w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
    const scale = Math.min(2, 8000 / Math.max(w, h));   // sharp for papers, within canvas limits
    const name = fileBase() + ".png", img = new Image();
    img.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = Math.round(w * scale);
      canvas.height = Math.round(h * scale);
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      deliver(name, () => canvas.toDataURL("image/png"), done => canvas.toBlob(done, "image/png"));
    };
    img.onerror = () => { readout.textContent = "PNG export failed: the browser could not draw the SVG; use SVG."; };
    img.src = svgUrl(svgText());
  }

  // ---------------------------------------------------------------- page text
  function modelBox() {
    const dl = $("model"), m = DATA.model || {}, f = frame();
    dl.replaceChildren();
    const add = (k, v) => { html("dt", {}, dl, k); html("dd", {}, dl, v); };
    if (m.task) add("task", m.task);
    if (m.kind) add("model", m.kind + (m.max_depth ? " (max depth " + m.max_depth + ")" : ""));
    if (m.aggregator) add("aggregator", m.aggregator);
    for (const kind of kindsAvail) {
      const k = f.kinds[kind];
      if (!k) continue;
      add(KIND_NAMES[kind], (m.structure && m.structure[kind] ? m.structure[kind] + ": " : "") + edgeCount(k) +
          " edges of " + k.rows * k.cols + " pairs, " + k.layers.length + " " + layerWord + "(s) \u00d7 " + k.heads + " head(s)");
    }
  }
  function pageText() {
    $("title").textContent = DATA.title;
    for (const n of DATA.notes || []) html("div", {class: "note"}, $("notes"), n);
    const dl = $("outputs");
    for (const [label, text] of DATA.outputs || []) { html("dt", {}, dl, label); html("dd", {}, dl, text); }
    if (!(DATA.outputs || []).length) $("output-box").hidden = true;
  }
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    if (p.has("view") && VIEWS.some(v => v[0] === p.get("view"))) state.view = p.get("view");
    if (p.has("frame")) state.frame = clamp(Number(p.get("frame")) || 0, 0, frames.length - 1);
    if (kindsAvail.includes(p.get("kind"))) state.kind = p.get("kind");
    const k = kindData();
    if (p.has("layer") && k && k.layers.includes(Number(p.get("layer")))) state.layer = k.layers.indexOf(Number(p.get("layer")));
    if (p.get("head") === "mean") state.head = "mean"; else if (p.has("head")) state.head = Number(p.get("head")) || 0;
    if (p.get("scale") === "max") state.scale = "max"; else if (p.get("scale") === "unit") state.scale = "unit";
    if (p.has("topk") && (p.get("topk") === "all" || Number(p.get("topk")) > 0)) state.topk = p.get("topk");
  }

  pageText();
  buildControls();
  readHash();
  render();
  // Read-only view for tests and for pages that embed this one.
  window.tgxExplorer = {data: DATA, state: state, render: render};
})();
