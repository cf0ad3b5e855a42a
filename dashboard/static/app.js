// fedmezo dashboard: fetches /api/status, /api/rounds and /api/clients, draws them with the vendored
// Chart.js, and refreshes on every server-sent event from /api/events (no page reloads).
"use strict";

(() => {
  const REFRESH_DEBOUNCE_MS = 300; // a round close brings a burst of events: refresh once
  const FALLBACK_POLL_MS = 15000; // refresh even if the event stream is blocked by a proxy
  const PALETTE = ["#2563eb", "#db2777", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4d7c0f",
    "#9333ea", "#0d9488", "#ea580c", "#475569"];

  const $ = (id) => document.getElementById(id);
  // the client table shows one /api/clients page: `after` is its cursor, `back` the cursors before it
  const state = { status: null, rounds: null, clients: null, skewMs: 0, charts: {}, refreshes: 0,
    page: { after: "", back: [], firstIndex: 0 } };
  window.fedmezoDashboard = state; // for debugging and the browser test

  // ---- formatting ----
  function fmtBytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
  }
  function fmtBytesSI(n) { // network traffic: powers of 1000, so log-axis ticks read 1 kB, 10 kB, ...
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1).replace(/\.0+$/, "")} ${units[i]}`;
  }
  const isDecade = (v) => v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9;
  const fmtLoss = (x) => (x === null || x === undefined ? "–" : x.toFixed(4));
  const fmtLr = (x) => (x === 0 ? "0" : x.toExponential(1).replace("e-", "e−"));
  function fmtAgo(ms) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() + state.skewMs - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ago`;
  }
  function fmtDuration(s) {
    s = Math.max(0, Math.round(s));
    const m = Math.floor(s / 60);
    return m ? `${m}:${String(s % 60).padStart(2, "0")} min` : `${s} s`;
  }
  const colorOf = (i) => PALETTE[i % PALETTE.length];

  // ---- banner and live indicator ----
  function showBanner(text) { const b = $("banner"); b.textContent = text; b.hidden = false; }
  function hideBanner() { $("banner").hidden = true; }
  function setLive(on, text) { const l = $("live"); l.className = `live ${on ? "on" : "off"}`; l.textContent = text; }

  // ---- data ----
  async function getJSON(url) {
    let response;
    try {
      response = await fetch(url, { cache: "no-store" });
    } catch (err) {
      throw new Error("the dashboard itself is unreachable (is `fedmezo dashboard` still running?)");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
      const server = body && body.server ? ` ${body.server}` : "";
      throw new Error(response.status === 503
        ? `Cannot reach the fedmezo server${server}: ${detail}. Retrying…`
        : `The fedmezo server${server} refused the request: ${detail}`);
    }
    return body;
  }

  let refreshing = false;
  let again = false;
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const page = `/api/clients?after=${encodeURIComponent(state.page.after)}`;
      const [status, rounds, clients] = await Promise.all(
        [getJSON("/api/status"), getJSON("/api/rounds"), getJSON(page)]);
      state.status = status; state.rounds = rounds; state.clients = clients;
      state.skewMs = status.server_time_unix_ms - Date.now();
      hideBanner();
      render();
      state.refreshes += 1;
      $("updated").textContent = new Date().toLocaleTimeString();
    } catch (err) {
      showBanner(err.message);
      if (!state.status) { $("run-state").textContent = "no data"; }
    } finally {
      refreshing = false;
      if (again) { again = false; setTimeout(refresh, 0); }
    }
  }
  let timer = null;
  function scheduleRefresh() {
    if (timer) return;
    timer = setTimeout(() => { timer = null; refresh(); }, REFRESH_DEBOUNCE_MS);
  }

  function connectEvents() {
    const source = new EventSource("/api/events");
    source.addEventListener("ready", () => { setLive(true, "● live"); scheduleRefresh(); }); // cursor pinned
    source.onmessage = () => scheduleRefresh();
    source.addEventListener("unavailable", (e) => {
      const data = JSON.parse(e.data);
      showBanner(`Cannot reach the fedmezo server ${data.server}: ${data.detail}. Retrying…`);
      setLive(false, "○ server unreachable");
    });
    source.addEventListener("available", () => { setLive(true, "● live"); refresh(); });
    source.onerror = () => setLive(false, "○ reconnecting"); // EventSource retries by itself
  }

  // ---- header ----
  function renderHeader() {
    const { status: s, config: c } = state.status;
    const badge = $("run-state");
    badge.textContent = s.run_state.replaceAll("_", " ");
    badge.className = `badge ${s.run_state}`;
    $("run-id").textContent = c.run_id ? `run ${c.run_id}` : "";
    $("model").textContent = c.model;
    const bf16 = c.weights && c.weights !== "fp32" ? ` · ${c.weights} weights` : ""; // bf16-sr: §7.4
    const frozen = c.freeze ? ` · ${c.freeze} frozen` : "";
    $("mode").textContent = c.mode === "lora" ? `LoRA (r = ${c.lora_rank})` : c.mode === "full" ? `full-parameter${bf16}${frozen}` : c.mode;
    const spread = c.lr_strategy !== "frozen" && c.lr_spread ? ` ± ${fmtLr(c.lr_spread)}` : ""; // frozen: one η for all
    const schedule = c.lr_schedule && c.lr_schedule !== "constant" ? ` · ${c.lr_schedule} decay` : "";
    $("lr").textContent = `${c.lr_strategy} · η₀ ${fmtLr(c.lr)}${spread}${schedule}`;
    const seeds = c.seed_scheme === "shared" ? "shared seeds" : "per-client seeds";
    $("estimator").textContent = `${c.estimator} · P = ${c.perturbations} · ${seeds}`;
    $("online").textContent = `${s.clients_online} of ${s.clients_total}`;
    $("traffic").textContent = `↑ ${fmtBytesSI(s.bytes_up)} · ↓ ${fmtBytesSI(s.bytes_down)}`;
    $("fingerprint").textContent = s.fingerprint ? s.fingerprint.slice(0, 16) : "–";
    $("fingerprint").title = s.fingerprint;
    $("server").textContent = state.status.server;
    const shown = s.current_round || s.rounds_completed;
    $("round-label").textContent = `Round ${shown} of ${s.total_rounds}`;
    const pct = Math.round(state.status.progress * 100);
    $("progress-bar").style.width = `${pct}%`;
    document.querySelector(".progress").setAttribute("aria-valuenow", String(pct));
    const waiting = $("waiting");
    if (state.status.waiting_for_clients > 0) {
      const n = state.status.waiting_for_clients;
      waiting.textContent = `Waiting for ${n} more client${n === 1 ? "" : "s"} to come online ` +
        `(a round opens with at least ${c.min_clients}).`;
      waiting.hidden = false;
    } else {
      waiting.hidden = true;
    }
    renderDeadline();
  }

  function renderDeadline() {
    const el = $("deadline");
    if (!state.status) return;
    const { status: s } = state.status;
    const at = state.status.deadline_at_unix_ms;
    if (s.run_state === "finished") { el.textContent = "run finished"; return; }
    if (at === null || at === undefined) {
      el.textContent = s.run_state === "waiting_for_clients" ? "waiting for clients" : "";
      return;
    }
    const left = (at - (Date.now() + state.skewMs)) / 1000;
    el.textContent = left > 0 ? `deadline in ${fmtDuration(left)}` : "deadline passed (closing)";
  }

  // ---- charts ----
  function chart(id, config) {
    if (!state.charts[id]) state.charts[id] = new Chart($(id), config);
    return state.charts[id];
  }
  const axisTitle = (text) => ({ display: true, text });

  function renderLoss(allRounds) {
    const rounds = allRounds.filter((r) => r.round_id > 0); // round 0 is the initial model's eval only
    const labels = rounds.map((r) => r.round_id);
    const clientIds = [...new Set(rounds.flatMap((r) => r.clients.map((c) => c.client_id)))].sort();
    const datasets = [{
      label: "all clients (mean)", data: rounds.map((r) => r.mean_loss), borderColor: "#111827",
      backgroundColor: "#111827", borderWidth: 3, pointRadius: 3, spanGaps: true, order: 0,
    }];
    clientIds.forEach((id, i) => datasets.push({
      label: id,
      data: rounds.map((r) => { const c = r.clients.find((x) => x.client_id === id); return c ? c.mean_loss : null; }),
      borderColor: colorOf(i), backgroundColor: colorOf(i), borderWidth: 1.5, pointRadius: 2,
      borderDash: [4, 3], spanGaps: true, order: 1,
    }));
    const ch = chart("chart-loss", {
      type: "line", data: { labels, datasets },
      options: { scales: { x: { title: axisTitle("round") }, y: { title: axisTitle("training loss") } } },
    });
    ch.data.labels = labels; ch.data.datasets = datasets; ch.update();
    $("loss-empty").hidden = rounds.some((r) => r.mean_loss !== null);
  }

  function renderEval(rounds) {
    const evaluated = rounds.filter((r) => r.eval_loss !== null || r.eval_exact_match !== null);
    const labels = evaluated.map((r) => (r.round_id === 0 ? "0 (initial)" : r.round_id));
    const datasets = [
      { label: "eval loss", data: evaluated.map((r) => r.eval_loss), yAxisID: "y", borderColor: "#2563eb",
        backgroundColor: "#2563eb", spanGaps: true, pointRadius: 3 },
      { label: "exact match (%)", data: evaluated.map((r) => r.eval_exact_match === null ? null : 100 * r.eval_exact_match),
        yAxisID: "y1", borderColor: "#16a34a", backgroundColor: "#16a34a", spanGaps: true, pointRadius: 3 },
    ];
    const ch = chart("chart-eval", {
      type: "line", data: { labels, datasets },
      options: { scales: {
        x: { title: axisTitle("round") },
        y: { position: "left", title: axisTitle("held-out loss") },
        y1: { position: "right", min: 0, max: 100, title: axisTitle("exact match (%)"), grid: { drawOnChartArea: false } },
      } },
    });
    ch.data.labels = labels; ch.data.datasets = datasets; ch.update();
    $("eval-empty").hidden = evaluated.length > 0;
  }

  function weightsDtype() { // what the server's weight bytes hold: bf16-sr weights are bf16
    const c = state.status.config;
    if (c.mode === "full") return c.weights === "bf16-sr" ? "bf16" : "fp32";
    return c.base_dtype === "fp32" ? "fp32" : `${c.base_dtype} base, fp32 adapters`;
  }

  function renderMemory(clients) {
    const reported = clients.filter((c) => c.peak_memory_bytes > 0 || c.inference_peak_memory_bytes > 0);
    const labels = reported.map((c) => c.client_id);
    const weights = state.status.model_size.weight_bytes;
    const measured = reported.some((c) => c.inference_peak_memory_bytes > 0);
    const top = Math.max(weights || 0, ...reported.map((c) => Math.max(c.peak_memory_bytes, c.inference_peak_memory_bytes)));
    const [unit, scale] = top >= 2 ** 30 ? ["GiB", 2 ** 30] : ["MiB", 2 ** 20];
    const scaled = (b) => (b ? b / scale : null);
    const datasets = [{
      type: "bar", label: "peak while training (MeZO)", data: reported.map((c) => scaled(c.peak_memory_bytes)),
      backgroundColor: reported.map((_, i) => colorOf(i)), order: 2,
    }];
    if (measured) {
      datasets.push({
        type: "bar", label: "inference peak (one forward, measured)",
        data: reported.map((c) => scaled(c.inference_peak_memory_bytes)), backgroundColor: "#9ca3af", order: 3,
      });
    }
    if (weights) {
      datasets.push({
        type: "line", label: `model weights (${weightsDtype()})`, data: reported.map(() => weights / scale),
        borderColor: "#111827", borderDash: [6, 4], borderWidth: 2, pointRadius: 0, order: 1,
      });
    }
    const ch = chart("chart-memory", {
      type: "bar", data: { labels, datasets },
      options: { scales: { y: { beginAtZero: true, title: axisTitle(unit) } },
        plugins: { tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${fmtBytes(ctx.parsed.y * scale)}` } } } },
    });
    ch.options.scales.y.title.text = unit;
    ch.data.labels = labels; ch.data.datasets = datasets; ch.update();
    $("memory-empty").hidden = reported.length > 0;
    const size = state.status.model_size;
    const baseline = measured
      ? "Grey: each client's measured peak of one plain forward pass (inference)."
      : "No client reported an inference peak: the dashed line (model weights) is the baseline.";
    $("memory-note").textContent = `${baseline} Model weights: ` +
      (weights ? `${fmtBytes(weights)} (${weightsDtype()}, ${size.source}).` : `${size.source}.`);
  }

  function renderBytes(allRounds, response) {
    const rounds = allRounds.filter((r) => r.round_id > 0);
    const labels = rounds.map((r) => r.round_id);
    const datasets = [{
      label: "fedmezo: seeds and scalars", data: rounds.map((r) => r.cumulative_bytes), borderColor: "#2563eb",
      backgroundColor: "#2563eb", pointRadius: 3,
    }];
    const haveFedavg = rounds.some((r) => r.fedavg_cumulative_bytes);
    if (haveFedavg) {
      datasets.push({
        label: "FedAvg with full fp32 tensors", data: rounds.map((r) => r.fedavg_cumulative_bytes),
        borderColor: "#dc2626", backgroundColor: "#dc2626", borderDash: [6, 4], pointRadius: 3,
      });
    }
    const ch = chart("chart-bytes", {
      type: "line", data: { labels, datasets },
      options: { scales: { x: { title: axisTitle("round") },
        y: { type: "logarithmic", title: axisTitle("cumulative bytes (up + down)"),
          ticks: { callback: (v) => (isDecade(v) ? fmtBytesSI(v) : ""), autoSkip: false },
          grid: { color: (ctx) => (ctx.tick && isDecade(ctx.tick.value) ? "rgba(0,0,0,0.1)" : "transparent") } } },
        plugins: { tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${fmtBytesSI(ctx.parsed.y)}` } } } },
    });
    ch.data.labels = labels; ch.data.datasets = datasets; ch.update();
    $("bytes-empty").hidden = rounds.length > 0;
    const last = rounds[rounds.length - 1];
    let note = response.fedavg_note + ".";
    if (last && last.fedavg_cumulative_bytes && last.cumulative_bytes) {
      const ratio = last.fedavg_cumulative_bytes / last.cumulative_bytes;
      note = `${Math.round(ratio).toLocaleString()}× fewer bytes than FedAvg so far. ` + note;
    }
    $("bytes-note").textContent = note;
  }

  // ---- client table ----
  function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
  function renderClients(clients) {
    const body = $("clients-body");
    const rows = clients.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.client = c.client_id;
      tr.append(cell(c.client_id, "mono"));
      const online = cell("");
      const dot = document.createElement("span"); dot.className = `dot${c.online ? " on" : ""}`;
      online.append(dot, document.createTextNode(c.online ? c.activity || "online" : "offline"));
      tr.append(online);
      const hb = cell(fmtAgo(c.last_heartbeat_unix_ms), "heartbeat"); hb.dataset.ms = String(c.last_heartbeat_unix_ms);
      tr.append(hb, cell(String(c.rounds_participated), "num"), cell(fmtLoss(c.last_loss), "num"));
      const fp = cell(c.fingerprint ? (c.in_sync ? `✓ in sync @ v${c.fingerprint_version}` : `✗ out of sync @ v${c.fingerprint_version}`) : "not reported",
        c.fingerprint ? (c.in_sync ? "ok" : "bad") : "muted");
      fp.title = c.fingerprint;
      tr.append(fp, cell(c.device || "–"), cell(c.peak_memory_bytes ? fmtBytes(c.peak_memory_bytes) : "–", "num"),
        cell(`${fmtBytesSI(c.bytes_up)} / ${fmtBytesSI(c.bytes_down)}`, "num"));
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr"); tr.className = "placeholder";
      const td = cell("no clients yet"); td.colSpan = 9; tr.append(td); rows.push(tr);
    }
    body.replaceChildren(...rows);
    renderPager(clients.length);
  }

  function renderPager(shown) {
    const { page } = state;
    const first = page.firstIndex;
    const total = state.clients.total;
    $("clients-range").textContent = shown
      ? `clients ${(first + 1).toLocaleString()}–${(first + shown).toLocaleString()} of ${total.toLocaleString()}`
      : `0 of ${total.toLocaleString()}`;
    $("clients-prev").disabled = page.back.length === 0;
    $("clients-next").disabled = !state.clients.next_after;
  }
  function turnPage(forward) {
    const { page } = state;
    if (forward) {
      if (!state.clients.next_after) return;
      page.back.push({ after: page.after, firstIndex: page.firstIndex });
      page.firstIndex += state.clients.clients.length;
      page.after = state.clients.next_after;
    } else {
      const previous = page.back.pop();
      if (!previous) return;
      page.after = previous.after;
      page.firstIndex = previous.firstIndex;
    }
    refresh();
  }

  function render() {
    renderHeader();
    const rounds = state.rounds.rounds;
    if (window.Chart) {
      renderLoss(rounds);
      renderEval(rounds);
      renderMemory(state.clients.clients);
      renderBytes(rounds, state.rounds);
    } else {
      showBanner("Chart library failed to load (/static/vendor/chart.umd.min.js)");
    }
    renderClients(state.clients.clients);
  }

  function tick() { // once a second: countdown and "seconds ago" move without refetching
    renderDeadline();
    document.querySelectorAll("#clients-body td.heartbeat").forEach((td) => {
      td.textContent = fmtAgo(Number(td.dataset.ms));
    });
  }

  function start() {
    if (window.Chart) {
      Chart.defaults.animation = false;
      Chart.defaults.maintainAspectRatio = false;
      Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
      Chart.defaults.plugins.legend.labels.boxWidth = 14;
    }
    $("clients-prev").addEventListener("click", () => turnPage(false));
    $("clients-next").addEventListener("click", () => turnPage(true));
    refresh();
    connectEvents();
    setInterval(tick, 1000);
    setInterval(refresh, FALLBACK_POLL_MS);
  }
  start();
})();
