// The interactive report: reads the JSON payload of eval_suite/report.py and draws the page with plain DOM and
// SVG (no library, no network). Statistics arrive as [mean, std, n, ci_lo, ci_hi, defined, reason].
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var EXAMPLES_PER_PAGE = 10;
  var MAX_ANNOTATED_HEADS = 16;
  var RDBU = [[5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247],
              [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31]];
  var VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
                 [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  var SVG_NS = "http://www.w3.org/2000/svg";
  var state = { metric: null, method: "", selected: null, shown: EXAMPLES_PER_PAGE };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v, digits) { return isNum(v) ? v.toFixed(digits === undefined ? 3 : digits) : "n/a"; }
  function pct(v) { return isNum(v) ? (100 * v).toFixed(1) + "%" : "n/a"; }
  function cellText(v) {
    var text = v.toFixed(2);
    if (text === "-0.00") text = "0.00";
    return text.replace(/^(-?)0\./, "$1.");
  }
  function ramp(stops, t) {
    t = Math.min(1, Math.max(0, t));
    var x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    var a = stops[i], b = stops[i + 1];
    return [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
  }
  function rgb(c) { return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }
  function ink(c) { return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 ? "#111" : "#fff"; }
  function className(names, label) {
    return names && label !== null && label !== undefined && label >= 0 && label < names.length ? String(names[label])
      : String(label);
  }

  // ------------------------------------------------------------------------------------------ scales
  function makeScale(kind, domain, seriesList) {
    var lo, hi;
    if (domain) { lo = domain[0]; hi = domain[1]; } else {
      var top = 0;
      seriesList.forEach(function (series) {
        series.forEach(function (s) { if (s[5] && isNum(s[0])) top = Math.max(top, Math.abs(s[0])); });
      });
      top = Math.max(kind === "diverging" ? 0.1 : 1e-9, Math.ceil(top * 10) / 10 || top);
      lo = kind === "diverging" ? -top : 0; hi = top;
    }
    var stops = kind === "diverging" ? RDBU : VIRIDIS;
    return { lo: lo, hi: hi, stops: stops, color: function (v) { return ramp(stops, (v - lo) / (hi - lo)); } };
  }
  function legend(scale) {
    var box = el("div", "legend");
    var bar = el("div", "bar");
    var parts = [];
    for (var i = 0; i <= 10; i++) parts.push(rgb(ramp(scale.stops, i / 10)) + " " + (i * 10) + "%");
    bar.style.background = "linear-gradient(to right, " + parts.join(", ") + ")";
    box.appendChild(el("span", null, fmt(scale.lo, 2)));
    box.appendChild(bar);
    box.appendChild(el("span", null, fmt(scale.hi, 2)));
    box.appendChild(el("span", "swatch"));
    box.appendChild(el("span", null, "undefined (n/a)"));
    return box;
  }

  // ------------------------------------------------------------------------------------------ grid
  // One layer x head grid. cells[i] describes head i (layer-major) for the tooltip.
  function drawGrid(spec) {
    var nL = spec.nLayers, nH = spec.nHeads;
    var block = el("div", "grid-block");
    block.appendChild(el("h3", null, spec.title));
    var grid = el("div", "grid");
    grid.style.gridTemplateColumns = "auto repeat(" + nH + ", auto)";
    grid.appendChild(el("div", "axis", "L \\ H"));
    for (var h = 0; h < nH; h++) grid.appendChild(el("div", "axis", String(h)));
    var annotate = nH <= MAX_ANNOTATED_HEADS;
    for (var l = 0; l < nL; l++) {
      grid.appendChild(el("div", "axis", String(l)));
      for (h = 0; h < nH; h++) {
        var i = l * nH + h, s = spec.values[i];
        var cell = el("div", "cell");
        cell.dataset.layer = l; cell.dataset.head = h; cell.dataset.grid = spec.gridId;
        cell.tabIndex = 0;
        cell.setAttribute("role", "button");
        if (!s || !s[5] || !isNum(s[0])) {
          cell.className = "cell undefined";
          cell.textContent = "n/a";
        } else {
          var c = spec.scale.color(s[0]);
          cell.style.background = rgb(c); cell.style.color = ink(c);
          if (annotate) cell.textContent = cellText(s[0]);
        }
        if (spec.significant && spec.significant[i]) {
          cell.classList.add("significant");
          cell.textContent = (cell.textContent || "") + "*";
        }
        if (state.selected && state.selected.layer === l && state.selected.head === h) cell.classList.add("selected");
        grid.appendChild(cell);
      }
    }
    block.appendChild(grid);
    block.appendChild(legend(spec.scale));
    return block;
  }

  function statLines(s) {
    if (!s) return ["not in this results file"];
    if (!s[5] || !isNum(s[0])) return ["undefined: " + (s[6] || "no reason recorded") + (isNum(s[2]) ? " (n = " + s[2] + ")" : "")];
    var lines = ["mean " + fmt(s[0])];
    lines.push(isNum(s[3]) && isNum(s[4]) ? "95% CI [" + fmt(s[3]) + ", " + fmt(s[4]) + "]" : "95% CI: not recorded");
    lines.push("std " + fmt(s[1]) + " · n = " + (isNum(s[2]) ? s[2] : "not recorded"));
    return lines;
  }

  // ------------------------------------------------------------------------------------------ tooltip
  var tooltipContent = null;  // function(gridId, layer, head) -> [heading, lines...]
  function showTooltip(event, cell) {
    var lines = tooltipContent(cell.dataset.grid, +cell.dataset.layer, +cell.dataset.head);
    var tip = $("tooltip");
    tip.textContent = "";
    tip.appendChild(el("div", "t-head", lines[0]));
    lines.slice(1).forEach(function (line) { tip.appendChild(el("div", null, line)); });
    tip.hidden = false;
    var x = event.clientX + 14, y = event.clientY + 14;
    var w = tip.offsetWidth, hgt = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) x = Math.max(4, event.clientX - w - 14);
    if (y + hgt > window.innerHeight - 4) y = Math.max(4, event.clientY - hgt - 14);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  function wireGrid(onClick) {
    var grids = $("grids");
    grids.addEventListener("mouseover", function (e) {
      var cell = e.target.closest(".cell");
      if (cell) showTooltip(e, cell);
    });
    grids.addEventListener("mousemove", function (e) {
      var cell = e.target.closest(".cell");
      if (cell && !$("tooltip").hidden) showTooltip(e, cell);
    });
    grids.addEventListener("mouseout", function (e) {
      if (!e.relatedTarget || !e.relatedTarget.closest || !e.relatedTarget.closest(".cell")) $("tooltip").hidden = true;
    });
    grids.addEventListener("click", function (e) {
      var cell = e.target.closest(".cell");
      if (cell) onClick(+cell.dataset.layer, +cell.dataset.head);
    });
    grids.addEventListener("keydown", function (e) {
      var cell = e.target.closest(".cell");
      if (cell && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); onClick(+cell.dataset.layer, +cell.dataset.head); }
    });
  }

  // ------------------------------------------------------------------------------------------ controls
  function metricByKey(metrics, key) {
    for (var i = 0; i < metrics.length; i++) if (metrics[i].key === key) return metrics[i];
    return null;
  }
  function fillControls(metrics, redraw) {
    var metricSelect = $("metric-select"), methodSelect = $("method-select");
    metrics.forEach(function (m) {
      var option = el("option", null, m.label);
      option.value = m.key;
      metricSelect.appendChild(option);
    });
    function syncMethods() {
      var metric = metricByKey(metrics, state.metric);
      methodSelect.textContent = "";
      metric.methods.forEach(function (name) {
        var option = el("option", null, name);
        option.value = name;
        methodSelect.appendChild(option);
      });
      $("method-label").hidden = !metric.methods.length;
      if (metric.methods.length) {
        if (metric.methods.indexOf(state.method) < 0) state.method = metric.methods[0];
        methodSelect.value = state.method;
      } else state.method = "";
      $("metric-help").textContent = metric.help;
    }
    state.metric = metrics[0].key;
    metricSelect.value = state.metric;
    syncMethods();
    metricSelect.addEventListener("change", function () { state.metric = metricSelect.value; syncMethods(); redraw(); });
    methodSelect.addEventListener("change", function () { state.method = methodSelect.value; redraw(); });
  }
  function seriesOf(grid, key, method) {
    var byMethod = grid.values[key];
    return byMethod ? byMethod[method || ""] || null : null;
  }
  function metricTitle(metric, method) { return metric.label + (method ? " · " + method : ""); }

  function facts(parts) {
    var box = $("facts");
    parts.forEach(function (p) {
      var span = el("span");
      span.appendChild(document.createTextNode(p[0] + " "));
      span.appendChild(el("b", null, p[1]));
      box.appendChild(span);
    });
  }

  // ------------------------------------------------------------------------------------------ evaluation page
  function evaluationPage() {
    var meta = DATA.meta, grid = DATA.grid;
    facts([["attention", String(meta.attn_impl)], ["data", meta.dataset + " / " + meta.split],
           ["examples", String(meta.n_examples)], ["accuracy", fmt(meta.accuracy)], ["macro-F1", fmt(meta.macro_f1)],
           ["classes", meta.label_names ? meta.label_names.join(" / ") : "not named"],
           ["query", String(meta.attention_query || "cls")],
           ["heads", grid.n_layers + " layers × " + grid.n_heads + " heads"],
           ["weights", String(meta.weights_fingerprint || "").slice(0, 19)],
           ["plots", String(meta.plots || "")]]);
    if (!grid.metrics.length) { $("grids").appendChild(el("p", "warning", "This results file has no layer × head metric.")); return; }
    function redraw() {
      var metric = metricByKey(grid.metrics, state.metric), series = seriesOf(grid, metric.key, state.method);
      var scale = makeScale(metric.scale, metric.domain, [series]);
      $("grids").textContent = "";
      $("grids").appendChild(drawGrid({ nLayers: grid.n_layers, nHeads: grid.n_heads, values: series, scale: scale,
                                        title: metricTitle(metric, state.method), gridId: "0" }));
    }
    tooltipContent = function (_, layer, head) {
      var metric = metricByKey(grid.metrics, state.metric);
      var s = seriesOf(grid, metric.key, state.method)[layer * grid.n_heads + head];
      return ["layer " + layer + ", head " + head + " — " + metricTitle(metric, state.method)].concat(statLines(s));
    };
    fillControls(grid.metrics, redraw);
    redraw();
    wireGrid(function (layer, head) {
      state.selected = { layer: layer, head: head };
      state.shown = EXAMPLES_PER_PAGE;
      redraw();
      tokenView();
      $("token-section").scrollIntoView({ block: "nearest" });
    });
    $("more-examples").addEventListener("click", function () { state.shown += EXAMPLES_PER_PAGE; tokenView(); });
    layerCharts();
    faithfulnessChart();
    var summary = meta.summary || [];
    if (summary.length) {
      $("summary-section").hidden = false;
      summary.forEach(function (line) { $("summary").appendChild(el("li", null, line)); });
    }
  }

  // ------------------------------------------------------------------------------------------ token view
  function tokenRow(name, tokens, values, primary, undefinedNote, segments) {
    var row = el("div", "maprow" + (primary ? " primary" : ""));
    var label = el("div", "name", name);
    label.title = name;
    row.appendChild(label);
    var box = el("div", "tokens");
    var top = 0, defined = false;
    if (values) values.forEach(function (v) { if (isNum(v)) { defined = true; top = Math.max(top, v); } });
    tokens.forEach(function (token, i) {
      // A text pair: the [SEP] between the two texts is not a content token, so it is drawn as a boundary.
      if (segments && i > 0 && segments[i] !== segments[i - 1]) box.appendChild(el("span", "sep", "[SEP]"));
      var span = el("span", "tok", token);
      var v = values ? values[i] : null;
      if (!defined) { span.className = "tok na"; span.title = token + ": " + (undefinedNote || "not stored"); }
      else if (v === 0) { span.className = "tok zero"; span.title = token + ": exactly 0"; }
      else if (isNum(v)) {
        var alpha = top > 0 ? v / top : 0;
        span.style.background = "rgba(203, 24, 29, " + (0.08 + 0.92 * alpha).toFixed(3) + ")";
        span.style.color = alpha > 0.6 ? "#fff" : "#111";
        span.title = token + ": " + v.toPrecision(3);
      }
      box.appendChild(span);
    });
    row.appendChild(box);
    return row;
  }
  function tokenView() {
    var sel = state.selected, meta = DATA.meta, examples = DATA.examples;
    if (!sel) return;
    var l = sel.layer, h = sel.head;
    $("token-section").hidden = false;
    $("token-title").textContent = "Token view: layer " + l + ", head " + h;
    $("token-help").textContent = examples.length
      ? "Attention of the " + (meta.attention_query === "mean" ? "mean query" : "classification token") +
        " over content tokens, beside each importance and context-mixing map. Each row sums to 1 over the content " +
        "tokens and is shaded relative to its own largest value; outlined grey tokens get exactly 0. Values on hover."
      : "This evaluation stored no token-level examples (--plot-examples 0).";
    var view = $("token-view");
    view.textContent = "";
    var frag = document.createDocumentFragment();
    examples.slice(0, state.shown).forEach(function (ex) {
      var box = el("div", "example");
      box.dataset.index = ex.index;
      var right = ex.label === ex.prediction ? "correct" : "wrong";
      var heading = "example " + ex.index + ": label " + className(meta.label_names, ex.label) + ", predicted " +
        className(meta.label_names, ex.prediction) + (isNum(ex.probability) ? " (p = " + ex.probability.toFixed(2) + ")" : "") +
        " · " + right;
      box.appendChild(el("h3", null, heading));
      var hasHeads = ex.heads && ex.heads[l] && ex.heads[l][h];
      var special = ex.special_mass && ex.special_mass[l] ? ex.special_mass[l][h] : null;
      var note = hasHeads ? (isNum(special) ? "This head puts " + pct(special) + " of its attention on special tokens; the row shows the rest, renormalised." : "")
        : "This results folder stores no per-head attention; the first row is the layer's head mean.";
      if (note) box.appendChild(el("p", "note", note));
      var onSpecial = "undefined: all of this head's attention is on special tokens";
      var row = function (name, values, primary, undefinedNote) {
        return tokenRow(name, ex.tokens, values, primary, undefinedNote, ex.segments);
      };
      if (hasHeads) box.appendChild(row("attention L" + l + " H" + h, ex.heads[l][h], true, onSpecial));
      else box.appendChild(row("attention L" + l + " (head mean)", ex.maps["attention layer " + l + " (head mean)"], true));
      if (ex.projected && ex.projected[l]) box.appendChild(row("projected L" + l + " H" + h + " (context mixing)", ex.projected[l][h], false, onSpecial));
      (meta.input_methods || []).forEach(function (m) { if (ex.maps[m]) box.appendChild(row(m, ex.maps[m])); });
      if (ex.maps["rollout (whole network)"]) box.appendChild(row("rollout (whole network)", ex.maps["rollout (whole network)"]));
      Object.keys(ex.representation || {}).forEach(function (m) {
        var perLayer = ex.representation[m];
        if (perLayer && perLayer[l]) box.appendChild(row(m + " (layer " + l + " representations)", perLayer[l]));
      });
      // Context mixing of the classification token: per head where the method has heads, the whole layer, and
      // the inputs' contributions through layers 0..l.
      Object.keys(ex.mixing || {}).forEach(function (m) {
        var views = ex.mixing[m];
        if (views.head && views.head[l] && views.head[l][h]) box.appendChild(row(m + " L" + l + " H" + h + " (context mixing)", views.head[l][h], false, "undefined: this head mixes nothing from content tokens"));
        if (views.layer && views.layer[l]) box.appendChild(row(m + " L" + l + " (whole layer)", views.layer[l]));
        if (views.inputs && views.inputs[l]) box.appendChild(row(m + " to inputs (layers 0.." + l + ")", views.inputs[l]));
      });
      frag.appendChild(box);
    });
    view.appendChild(frag);
    $("more-examples").hidden = state.shown >= examples.length;
    $("more-examples").textContent = "show more examples (" + Math.min(state.shown, examples.length) + " of " + examples.length + " shown)";
  }

  // ------------------------------------------------------------------------------------------ small charts
  function layerCharts() {
    var charts = DATA.layers || [];
    if (!charts.length) return;
    $("layer-section").hidden = false;
    charts.forEach(function (chart) {
      var W = 340, H = 190, left = 40, right = 10, top = 10, bottom = 34;
      var box = el("div", "chart");
      box.dataset.key = chart.key;
      box.appendChild(el("h3", null, chart.label));
      var plot = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
      var n = chart.layers.length, x = function (i) { return left + (n === 1 ? 0.5 : i / (n - 1)) * (W - left - right); };
      var y = function (v) { return top + (1 - Math.min(1, Math.max(0, v))) * (H - top - bottom); };
      [0, 0.5, 1].forEach(function (t) {
        plot.appendChild(svg("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), stroke: "#e3e3e8" }));
        plot.appendChild(svg("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end", class: "muted" }, t.toFixed(1)));
      });
      var points = [];
      chart.values.forEach(function (s, i) {
        var layer = chart.layers[i];
        plot.appendChild(svg("text", { x: x(i), y: H - bottom + 16, "text-anchor": "middle", class: "muted" }, String(layer)));
        var g = svg("g", {});
        g.appendChild(svg("title", {}, "layer " + layer + ": " + statLines(s).join(", ")));
        if (!s[5] || !isNum(s[0])) {
          g.appendChild(svg("text", { x: x(i), y: y(0.5), "text-anchor": "middle", class: "muted" }, "n/a"));
        } else {
          var lo = isNum(s[3]) ? s[3] : s[0] - (s[1] || 0), hi = isNum(s[4]) ? s[4] : s[0] + (s[1] || 0);
          g.appendChild(svg("line", { x1: x(i), x2: x(i), y1: y(lo), y2: y(hi), stroke: "#777" }));
          g.appendChild(svg("circle", { cx: x(i), cy: y(s[0]), r: 4, fill: "#2166ac" }));
          points.push(x(i) + "," + y(s[0]));
        }
        plot.appendChild(g);
      });
      if (points.length > 1) plot.insertBefore(svg("polyline", { points: points.join(" "), fill: "none", stroke: "#92c5de" }), plot.firstChild);
      plot.appendChild(svg("text", { x: (W + left) / 2, y: H - 4, "text-anchor": "middle", class: "muted" }, "layer"));
      box.appendChild(plot);
      var ci = chart.values.some(function (s) { return isNum(s[3]); });
      box.appendChild(el("p", "help", chart.help + " Whiskers: " + (ci ? "95% interval" : "± std (no interval recorded)") + "."));
      $("layer-charts").appendChild(box);
    });
  }

  function barChart(title, rows, pick, note) {
    var W = 520, rowH = 20, left = 170, right = 120, top = 8;
    var H = top + rows.length * rowH + 24;
    var values = [];
    rows.forEach(function (r) { var s = pick(r); if (s[5] && isNum(s[0])) values.push(s[0], isNum(s[3]) ? s[3] : s[0], isNum(s[4]) ? s[4] : s[0]); });
    var lo = Math.min(0, Math.min.apply(null, values.concat([0]))), hi = Math.max(1e-6, Math.max.apply(null, values.concat([0])));
    if (lo === 0) lo = 0;  // not -0, which would print as -0.00
    var x = function (v) { return left + (v - lo) / (hi - lo) * (W - left - right); };
    var box = el("div", "chart");
    box.appendChild(el("h3", null, title));
    var plot = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    plot.appendChild(svg("line", { x1: x(0), x2: x(0), y1: top, y2: H - 20, stroke: "#999" }));
    rows.forEach(function (r, i) {
      var s = pick(r), cy = top + i * rowH + rowH / 2;
      var g = svg("g", {});
      g.appendChild(svg("title", {}, r.name + ": " + statLines(s).join(", ")));
      g.appendChild(svg("text", { x: left - 6, y: cy + 4, "text-anchor": "end" }, r.name));
      if (s[5] && isNum(s[0])) {
        g.appendChild(svg("rect", { x: Math.min(x(0), x(s[0])), y: cy - 6, width: Math.abs(x(s[0]) - x(0)), height: 12,
                                    fill: r.name === "random" ? "#bdbdbd" : "#4393c3" }));
        if (isNum(s[3]) && isNum(s[4])) g.appendChild(svg("line", { x1: x(s[3]), x2: x(s[4]), y1: cy, y2: cy, stroke: "#222" }));
        g.appendChild(svg("text", { x: W - right + 6, y: cy + 4, class: "muted" }, fmt(s[0]) + " (n=" + (isNum(s[2]) ? s[2] : "?") + ")"));
      } else g.appendChild(svg("text", { x: x(0) + 4, y: cy + 4, class: "muted" }, "n/a: " + (s[6] || "undefined")));
      plot.appendChild(g);
    });
    plot.appendChild(svg("text", { x: x(lo), y: H - 6, class: "muted" }, fmt(lo, 2)));
    plot.appendChild(svg("text", { x: x(hi), y: H - 6, "text-anchor": "end", class: "muted" }, fmt(hi, 2)));
    box.appendChild(plot);
    box.appendChild(el("p", "help", note));
    return box;
  }
  function faithfulnessChart() {
    var faith = DATA.faithfulness;
    if (!faith || !faith.rankings.length) return;
    $("faith-section").hidden = false;
    var wrap = el("div", "charts");
    var fractions = (faith.fractions || []).join(", ");
    wrap.appendChild(barChart("comprehensiveness", faith.rankings, function (r) { return r.comprehensiveness; },
      "Drop in the predicted class's probability when the top-ranked tokens are removed (fractions " + fractions + "); higher is more faithful."));
    wrap.appendChild(barChart("sufficiency", faith.rankings, function (r) { return r.sufficiency; },
      "Drop when only the top-ranked tokens are kept; lower is more faithful. Grey: the random ranking."));
    $("faith-chart").appendChild(wrap);
  }

  // ------------------------------------------------------------------------------------------ compare page
  function comparePage() {
    var names = DATA.names, grids = DATA.grids;
    facts([["A", names[0] + " · " + DATA.meta[0].dataset + " / " + DATA.meta[0].split + " · n = " + DATA.meta[0].n_examples],
           ["B", names[1] + " · " + DATA.meta[1].dataset + " / " + DATA.meta[1].split + " · n = " + DATA.meta[1].n_examples],
           ["heads", grids[0].n_layers + " layers × " + grids[0].n_heads + " heads"]]);
    (DATA.warnings || []).forEach(function (w) { $("header").appendChild(el("p", "warning", "Not like for like: " + w)); });
    var keysB = grids[1].metrics.map(function (m) { return m.key; });
    var metrics = grids[0].metrics.filter(function (m) { return keysB.indexOf(m.key) >= 0; }).map(function (m) {
      var other = metricByKey(grids[1].metrics, m.key);
      return Object.assign({}, m, { methods: m.methods.filter(function (x) { return other.methods.indexOf(x) >= 0; }) });
    });
    if (!metrics.length) { $("grids").appendChild(el("p", "warning", "The two results files share no layer × head metric.")); return; }
    var nL = grids[0].n_layers, nH = grids[0].n_heads;
    function listed() {
      var out = {};
      DATA.differences.forEach(function (d) {
        if (d.metric === state.metric && (d.method || "") === (state.method || "")) out[d.layer * nH + d.head] = d;
      });
      return out;
    }
    function current() {
      var a = seriesOf(grids[0], state.metric, state.method), b = seriesOf(grids[1], state.metric, state.method);
      var tests = listed();
      var diff = a.map(function (sa, i) {
        var sb = b[i], d = tests[i];
        if (d && isNum(d.difference)) return [d.difference, null, null, d.ci95 ? d.ci95[0] : null, d.ci95 ? d.ci95[1] : null, true, null];
        if (sa[5] && sb[5] && isNum(sa[0]) && isNum(sb[0])) return [sb[0] - sa[0], null, null, null, null, true, null];
        return [null, null, null, null, null, false, "undefined in " + (sa[5] ? "B" : sb[5] ? "A" : "both")];
      });
      return { a: a, b: b, diff: diff, tests: tests };
    }
    function redraw() {
      var metric = metricByKey(metrics, state.metric), c = current();
      var scale = makeScale(metric.scale, metric.domain, [c.a, c.b]);
      var significant = c.a.map(function (_, i) { return !!(c.tests[i] && c.tests[i].significant); });
      $("grids").textContent = "";
      $("grids").appendChild(drawGrid({ nLayers: nL, nHeads: nH, values: c.a, scale: scale, title: "A: " + names[0], gridId: "a" }));
      $("grids").appendChild(drawGrid({ nLayers: nL, nHeads: nH, values: c.b, scale: scale, title: "B: " + names[1], gridId: "b" }));
      $("grids").appendChild(drawGrid({ nLayers: nL, nHeads: nH, values: c.diff, scale: makeScale("diverging", null, [c.diff]),
                                        title: "B − A (* significant)", gridId: "d", significant: significant }));
      var rows = Object.keys(c.tests).map(function (k) { return c.tests[k]; }).filter(function (d) { return d.significant; });
      rows.sort(function (x, y) { return (x.p_value || 0) - (y.p_value || 0); });
      var table = el("table", "diffs");
      var head = el("tr");
      ["layer", "head", "difference", "95% CI", "p"].forEach(function (t) { head.appendChild(el("th", null, t)); });
      table.appendChild(head);
      rows.forEach(function (d) {
        var tr = el("tr");
        [d.layer, d.head, fmt(d.difference), d.ci95 ? "[" + fmt(d.ci95[0]) + ", " + fmt(d.ci95[1]) + "]" : "n/a",
         isNum(d.p_value) ? d.p_value.toPrecision(2) : "n/a"].forEach(function (t) { tr.appendChild(el("td", null, String(t))); });
        table.appendChild(tr);
      });
      var block = el("div", "grid-block");
      block.appendChild(el("h3", null, rows.length + " significant differences (" + metricTitle(metric, state.method) + ")"));
      if (!DATA.differences.length) block.appendChild(el("p", "help", "No tests were supplied: B − A is the difference of means, untested."));
      block.appendChild(table);
      $("grids").appendChild(block);
    }
    tooltipContent = function (gridId, layer, head) {
      var metric = metricByKey(metrics, state.metric), c = current(), i = layer * nH + head;
      var title = "layer " + layer + ", head " + head + " — " + metricTitle(metric, state.method);
      if (gridId === "a") return [title + " · A"].concat(statLines(c.a[i]));
      if (gridId === "b") return [title + " · B"].concat(statLines(c.b[i]));
      var d = c.tests[i], lines = [title + " · B − A", "A " + fmt(c.a[i][0]) + " · B " + fmt(c.b[i][0])];
      if (d) {
        lines.push("difference " + fmt(d.difference) + (d.ci95 ? ", 95% CI [" + fmt(d.ci95[0]) + ", " + fmt(d.ci95[1]) + "]" : ""));
        lines.push("p = " + (isNum(d.p_value) ? d.p_value.toPrecision(2) : "n/a") + (d.significant ? " · significant" : " · not significant"));
      } else lines.push(c.diff[i][5] ? "difference of means " + fmt(c.diff[i][0]) + " (not tested)" : c.diff[i][6]);
      return lines;
    };
    fillControls(metrics, redraw);
    redraw();
    wireGrid(function (layer, head) { state.selected = { layer: layer, head: head }; redraw(); });
  }

  if (DATA.kind === "compare") comparePage(); else evaluationPage();
  window.reportTiming = { readyMs: performance.now() };
  document.documentElement.dataset.ready = "1";
})();
