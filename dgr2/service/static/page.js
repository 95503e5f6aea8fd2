"use strict";
// The comparison page: one request ranked by both decoders, shown side by side, and each decode replayed
// pass by pass. It calls the public API only. Every value that comes from the service or from the request
// is written with textContent (never parsed as markup): item ids and titles come from clients.

const DECODERS = ["ar", "diffusion"];
const TITLES = { ar: "AR", diffusion: "Block diffusion" };
const TOP = 10;
const ROW = 32; // replay cells per row: one diffusion block of the shipped models
const PASSES_PER_SECOND = 60;
const MAX_LOOKUP = 256; // ids per POST /v1/items
const HINTS = {
  413: "The request is too large for this service.",
  422: "The service refused the request as invalid.",
  429: "The decoder's queue is full: the service is overloaded; try again shortly.",
  500: "The service failed on this request.",
  503: "The service is not ready (models loading) or is shutting down.",
  504: "The request's deadline passed before it was ranked.",
};

const $ = (id) => document.getElementById(id);
const replays = {}; // decoder -> {show(pass), passes, timer}
let busy = false;
let served = []; // GET /v1/models' "models": every model the service serves

function el(tag, opts = {}, children = []) {
  const node = document.createElement(tag);
  if (opts.cls) node.className = opts.cls;
  if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
  if (opts.title !== undefined) node.title = String(opts.title);
  for (const [key, value] of Object.entries(opts.data || {})) node.dataset[key] = String(value);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// ------------------------------------------------------------------ talking to the service
async function call(method, path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    return { ok: false, status: 0, message: `Could not reach the service at ${location.origin} (${err.message}). Is it running?` };
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (resp.ok && data !== null && typeof data === "object") return { ok: true, status: resp.status, data };
  return { ok: false, status: resp.status, message: describeError(resp, data) };
}

function describeError(resp, data) {
  const err = data && typeof data === "object" && data.error && typeof data.error === "object" ? data.error : null;
  let detail = err && typeof err.message === "string" ? err.message : "";
  if (!detail) detail = resp.ok ? "The answer was not JSON." : resp.statusText || "No details were given.";
  const parts = [`HTTP ${resp.status}.`, HINTS[resp.status] || "", detail];
  const retry = resp.headers.get("retry-after");
  if (retry) parts.push(`Retry after ${retry} s.`);
  return parts.filter(Boolean).join(" ");
}

function setStatus(text) {
  $("status").textContent = text;
}

function showRequestError(text) {
  const box = $("request-error");
  box.textContent = text;
  box.hidden = false;
}

function hideRequestError() {
  $("request-error").hidden = true;
  $("request-error").textContent = "";
}

// ------------------------------------------------------------------ the request
function formatRequest(obj) {
  const lines = Object.entries(obj).map(([key, value]) => `  ${JSON.stringify(key)}: ${JSON.stringify(value)}`);
  return `{\n${lines.join(",\n")}\n}`;
}

function parseRequest() {
  let obj;
  try {
    obj = JSON.parse($("request-json").value);
  } catch (err) {
    return { error: `The request is not valid JSON: ${err.message}` };
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    return { error: "The request must be a JSON object, like a POST /v1/rerank body." };
  }
  if (!Array.isArray(obj.candidates) || obj.candidates.length === 0) {
    return { error: "The request needs a non-empty \"candidates\" list." };
  }
  return { request: obj };
}

// the model picked in the selector; null until GET /v1/models answered (the service's default applies)
function pickedModel() {
  return $("model").value || null;
}

async function drawExample() {
  hideRequestError();
  setStatus("Drawing an example request…");
  const model = pickedModel();
  const answer = await call("GET", model ? `/v1/example-request?model=${encodeURIComponent(model)}` : "/v1/example-request");
  if (!answer.ok) {
    setStatus("");
    showRequestError(`Could not draw an example request. ${answer.message}`);
    return;
  }
  $("request-json").value = formatRequest(answer.data);
  const d = answer.data;
  setStatus(`Example: ${d.history.length} history items, ${d.candidates.length} candidates.`);
}

async function loadModels() {
  const answer = await call("GET", "/v1/models");
  if (!answer.ok) {
    $("models").textContent = `Could not ask the service what it serves. ${answer.message}`;
    $("models").className = "error";
    return;
  }
  const m = answer.data;
  served = Array.isArray(m.models) && m.models.length ? m.models : [{ model: m.model, default: true, decoders: m.decoders }];
  const picker = $("model");
  picker.replaceChildren(...served.map((s) => {
    const option = el("option", { text: s.model });
    option.value = s.model;
    option.selected = Boolean(s.default);
    return option;
  }));
  $("model-picker").hidden = served.length < 2;
  describeModel(m.ready);
}

function describeModel(ready) {
  const m = served.find((s) => s.model === pickedModel()) || served[0];
  const parts = (m.decoders || []).map((d) => {
    const settings = d.decoder === "diffusion" ? `, block ${d.block_size}, threshold ${d.threshold}` : "";
    return `${TITLES[d.decoder] || d.decoder}: ${d.version}${settings}`;
  });
  const of = served.length > 1 ? ` (one of ${served.length} served)` : "";
  $("models").className = "muted";
  $("models").textContent = `Model ${m.model}${of}. ${parts.join("; ")}.${ready === false ? " Not ready yet." : ""}`;
}

function pickModel() {
  describeModel();
  drawExample();
}

// ------------------------------------------------------------------ item names
function itemId(ref) {
  return ref && typeof ref === "object" ? ref.id : ref;
}

async function lookUpItems(request, answers, model) {
  const info = new Map();
  for (const ref of [...(Array.isArray(request.history) ? request.history : []), ...request.candidates]) {
    if (ref && typeof ref === "object" && typeof ref.id === "string") {
      info.set(ref.id, { brand: ref.brand ?? null, category: ref.category ?? null, title: ref.title ?? null, given: true });
    }
  }
  const wanted = new Set();
  for (const answer of answers) {
    if (!answer.ok) continue;
    for (const r of answer.data.results.slice(0, TOP)) wanted.add(r.item_id);
    for (const step of answer.data.reasoning_steps || []) {
      if (step.item_id) wanted.add(step.item_id);
      for (const ev of step.evidence) if (ev.history_item_id) wanted.add(ev.history_item_id);
    }
  }
  const ids = [...wanted].filter((id) => !info.has(id) && typeof id === "string" && id.length > 0 && id.length <= 256);
  let note = "";
  for (let i = 0; i < ids.length; i += MAX_LOOKUP) {
    const body = { ids: ids.slice(i, i + MAX_LOOKUP) };
    if (model) body.model = model;
    const answer = await call("POST", "/v1/items", body);
    if (!answer.ok) {
      note = `Item names are missing: ${answer.message}`;
      break;
    }
    for (const item of answer.data.items) if (item.known) info.set(item.id, item);
  }
  return { info, note };
}

function nameOf(names, id, field) {
  const item = names.info.get(id);
  return item && item[field] ? item[field] : null;
}

// ------------------------------------------------------------------ panels
function resetPanel(decoder) {
  stopReplay(decoder);
  const panel = $(`panel-${decoder}`);
  const heading = panel.querySelector("h2");
  heading.textContent = TITLES[decoder];
  panel.replaceChildren(heading);
  return panel;
}

function showPending(decoder) {
  const panel = resetPanel(decoder);
  panel.dataset.state = "pending";
  panel.append(el("p", { cls: "muted", text: "Ranking…" }));
}

function showPanelError(decoder, message) {
  const panel = resetPanel(decoder);
  panel.dataset.state = "error";
  panel.append(el("p", { cls: "error panel-error", text: message }));
}

function renderPanel(decoder, answers, request, names) {
  const answer = answers[decoder];
  if (!answer.ok) {
    showPanelError(decoder, `${TITLES[decoder]} could not rank this request. ${answer.message}`);
    return;
  }
  const data = answer.data;
  const otherAnswer = answers[DECODERS.find((d) => d !== decoder)];
  const other = otherAnswer && otherAnswer.ok ? otherAnswer.data : null;
  const panel = resetPanel(decoder);
  panel.querySelector("h2").append(el("span", { cls: "version", text: ` ${data.model_version}` }));
  panel.append(
    statsTable(data),
    rankingSection(data, other, names),
    reasoningSection(data, names),
    replaySection(decoder, data),
  );
  panel.dataset.state = "done";
}

function statsTable(data) {
  const u = data.usage, t = data.timing, v = data.validity;
  const rows = [
    ["latency", "latency", `queue ${t.queue_ms.toFixed(1)} ms · decode ${t.decode_ms.toFixed(1)} ms · total ${t.total_ms.toFixed(1)} ms`],
    ["tokens", "tokens", `${u.prompt_tokens} prompt · ${u.generated_tokens} generated`],
    ["forward-passes", "forward passes", String(u.forward_passes)],
    ["tokens-per-forward", "tokens per forward pass", (u.generated_tokens / Math.max(1, u.forward_passes)).toFixed(2)],
    ["validity", "valid as decoded", v.valid_as_decoded ? "yes" : "no"],
    ["repairs", "repaired by the guard", v.repaired
      ? `yes (duplicates ${v.duplicates}, missing ${v.missing}, out of set ${v.out_of_set}${v.malformed ? ", malformed" : ""})`
      : "no"],
  ];
  if (data.unknown_items.length) {
    rows.push(["unknown", "items outside the catalog", String(data.unknown_items.length)]);
  }
  const body = rows.map(([key, label, value]) => el("tr", {}, [el("th", { text: label }), el("td", { text: value, data: { stat: key } })]));
  return el("table", { cls: "stats" }, [el("tbody", {}, body)]);
}

function rankingSection(data, other, names) {
  const top = data.results.slice(0, TOP);
  const otherRank = new Map((other ? other.results : []).map((r) => [r.item_id, r.rank]));
  let differ = 0;
  const rows = top.map((r, i) => {
    const otherItem = other && other.results[i] ? other.results[i].item_id : null;
    const differs = other !== null && otherItem !== r.item_id;
    if (differs) differ += 1;
    const rankThere = otherRank.get(r.item_id);
    const there = other === null ? "—" : rankThere === undefined ? "not ranked" : `#${rankThere}`;
    return el("tr", { cls: differs ? "differs" : "", data: { itemId: r.item_id, rank: r.rank } }, [
      el("td", { text: r.rank }),
      el("td", { cls: "item-id", text: r.item_id, title: r.item_id }),
      el("td", { text: nameOf(names, r.item_id, "brand") || "—" }),
      el("td", { text: nameOf(names, r.item_id, "category") || "—" }),
      el("td", { cls: "num", text: r.relevance_score.toFixed(3) }),
      el("td", { cls: "num", text: there }),
    ]);
  });
  const head = el("tr", {}, ["rank", "item", "brand", "category", "score", "other's rank"].map((h) => el("th", { text: h })));
  const common = other ? top.filter((r) => other.results.slice(0, TOP).some((o) => o.item_id === r.item_id)).length : 0;
  const legend = other
    ? `Highlighted: another item than the other decoder's at that rank (${differ} of ${top.length} ranks; ${common} items in both top ${TOP}s).`
    : "The other decoder gave no ranking to compare with.";
  return el("section", { cls: "ranking" }, [
    el("h3", { text: `Top ${top.length}` }),
    el("table", { cls: "ranking-table" }, [el("thead", {}, [head]), el("tbody", {}, rows)]),
    el("p", { cls: "muted legend", text: legend }),
  ]);
}

// ------------------------------------------------------------------ reasoning
function ordinal(n) {
  if (n === 1) return "the most recent";
  const suffix = n % 10 === 1 && n % 100 !== 11 ? "st" : n % 10 === 2 && n % 100 !== 12 ? "nd" : n % 10 === 3 && n % 100 !== 13 ? "rd" : "th";
  return `the ${n}${suffix} most recent`;
}

function historyItem(ev) {
  return ev.history_item_id === null
    ? `history item h${ev.history_recency} (the request has no such item)`
    : `${ev.history_item_id} (${ordinal(ev.history_recency)} history item)`;
}

function describeEvidence(ev, candidateId, names) {
  if (ev.relation === "co_occurrence") {
    let windows = "";
    if (ev.shared_windows_min !== null && ev.shared_windows_min !== undefined) {
      const max = ev.shared_windows_max;
      windows = max === null ? ` (${ev.shared_windows_min}+ shared windows)`
        : max === ev.shared_windows_min ? ` (${max} shared window${max === 1 ? "" : "s"})`
        : ` (${ev.shared_windows_min}–${max} shared windows)`;
    }
    return `co-occurs with ${historyItem(ev)} in other users' histories${windows}`;
  }
  const field = ev.relation === "brand" ? "brand" : "category";
  const name = nameOf(names, candidateId, field) || (ev.history_item_id && nameOf(names, ev.history_item_id, field));
  return `same ${field}${name ? ` (${name})` : ""} as ${historyItem(ev)}`;
}

function describeStep(step, names) {
  const strength = step.strength === null ? "no strength given" : `strength ${step.strength} of 9`;
  const evidence = step.evidence.map((ev) => describeEvidence(ev, step.item_id, names));
  const said = evidence.length ? evidence.join("; ") : "no shared brand or category, no co-occurrence with the history";
  return `${strength}: ${said}${step.complete ? "" : " (the entry strays from the trace's format)"}`;
}

function stepLine(step, names, label) {
  return el("li", { data: { index: step.index } }, [
    el("span", { cls: "item-id", text: label }),
    el("span", { text: ` — ${describeStep(step, names)}` }),
  ]);
}

function reasoningSection(data, names) {
  const steps = data.reasoning_steps || [];
  const byIndex = new Map();
  for (const step of steps) if (!byIndex.has(step.index)) byIndex.set(step.index, step);
  const topLines = data.results.slice(0, TOP).map((r) => {
    const step = byIndex.get(r.index);
    return step ? stepLine(step, names, r.item_id)
      : el("li", {}, [el("span", { cls: "item-id", text: r.item_id }), el("span", { text: " — not assessed in the trace" })]);
  });
  const incomplete = steps.filter((s) => !s.complete).length;
  const all = steps.map((s) => stepLine(s, names, s.item_id === null ? `candidate ${s.index + 1} (not in the request)` : s.item_id));
  return el("section", { cls: "reasoning" }, [
    el("h3", { text: "Why: the decoded reasoning for the top items" }),
    el("ol", { cls: "reasoning-top" }, topLines),
    el("details", {}, [
      el("summary", { text: `All ${steps.length} trace entries, in the order written (${incomplete} off format)` }),
      el("ol", { cls: "reasoning-all" }, all),
    ]),
  ]);
}

// ------------------------------------------------------------------ replay
function replaySection(decoder, data) {
  const record = data.passes;
  const section = el("section", { cls: "replay" }, [el("h3", { text: "The decode, pass by pass" })]);
  if (!record) {
    section.append(el("p", { cls: "muted", text: "The answer carries no pass record." }));
    return section;
  }
  const passes = record.positions.length;
  const decidedAt = new Array(record.tokens.length).fill(-1);
  record.positions.forEach((positions, pass) => positions.forEach((pos) => { decidedAt[pos] = pass; }));
  const cells = [];
  const grid = el("div", { cls: "grid", data: { blockSize: record.block_size } });
  for (let start = 0; start < record.tokens.length; start += ROW) {
    const label = record.block_size > 1 ? `block ${start / record.block_size + 1}` : `${start}–${Math.min(start + ROW, record.tokens.length) - 1}`;
    const row = el("div", { cls: "grid-row" }, [el("span", { cls: "grid-label", text: label })]);
    for (let pos = start; pos < Math.min(start + ROW, record.tokens.length); pos += 1) {
      const cell = el("span", { cls: "cell", title: `position ${pos}: ${record.tokens[pos]} (pass ${decidedAt[pos] + 1})` });
      cells.push(cell);
      row.append(cell);
    }
    grid.append(row);
  }
  const slider = el("input", { cls: "replay-slider" });
  slider.type = "range";
  slider.min = "0";
  slider.max = String(passes - 1);
  slider.value = String(passes - 1);
  slider.setAttribute("aria-label", `${TITLES[decoder]} forward pass`);
  const play = el("button", { cls: "replay-play", text: "Play" });
  play.type = "button";
  const caption = el("p", { cls: "replay-caption" });
  const counter = el("span", { cls: "replay-counter" });

  const show = (pass) => {
    slider.value = String(pass);
    cells.forEach((cell, pos) => {
      cell.classList.toggle("decided", decidedAt[pos] <= pass);
      cell.classList.toggle("current", decidedAt[pos] === pass);
    });
    const decided = record.positions[pass];
    const done = decidedAt.filter((p) => p <= pass).length;
    counter.textContent = `pass ${pass + 1} of ${passes} · ${done} of ${record.tokens.length} positions decided`;
    const what = pass === 0 && decided.length === 0 ? "the prefill, which decides nothing here"
      : decided.length === 0 ? "decided nothing (it commits a finished block)"
      : `decided ${decided.length} position${decided.length === 1 ? "" : "s"}: ` +
        decided.slice(0, 12).map((p) => `${p} ${record.tokens[p]}`).join(", ") + (decided.length > 12 ? ", …" : "");
    caption.textContent = `Pass ${pass + 1}${pass === 0 && decided.length ? " (the prefill)" : ""} ${what}`;
  };
  slider.addEventListener("input", () => { stopReplay(decoder); show(Number(slider.value)); });
  play.addEventListener("click", () => {
    if (replays[decoder].timer) stopReplay(decoder);
    else startReplay(decoder, Number(slider.value) >= passes - 1 ? 0 : Number(slider.value));
  });
  replays[decoder] = { show, passes, play, timer: null };
  show(passes - 1);
  const what = record.block_size > 1
    ? `Each square is an output position, ${ROW} to a row (one block); a pass unmasks positions inside one block.`
    : `Each square is an output position, ${ROW} to a row; AR decides one per pass, in order.`;
  section.append(
    el("p", { cls: "muted", text: what }),
    el("div", { cls: "replay-controls", data: { passes } }, [play, slider, counter]),
    caption, grid);
  return section;
}

function startReplay(decoder, from) {
  const replay = replays[decoder];
  if (!replay) return;
  stopReplay(decoder);
  let pass = from;
  replay.show(pass);
  replay.play.textContent = "Pause";
  replay.timer = setInterval(() => {
    pass += 1;
    if (pass >= replay.passes) {
      stopReplay(decoder);
      return;
    }
    replay.show(pass);
  }, 1000 / PASSES_PER_SECOND);
}

function stopReplay(decoder) {
  const replay = replays[decoder];
  if (!replay || !replay.timer) return;
  clearInterval(replay.timer);
  replay.timer = null;
  replay.play.textContent = "Play";
}

// ------------------------------------------------------------------ the comparison
async function compare() {
  if (busy) return;
  hideRequestError();
  const parsed = parseRequest();
  if (parsed.error) {
    showRequestError(parsed.error);
    return;
  }
  busy = true;
  $("compare").disabled = true;
  $("replay-both-controls").hidden = true;
  $("timing-note").hidden = true;
  setStatus("Ranking with both decoders…");
  DECODERS.forEach(showPending);
  try {
    // the request's own "model" wins; without one, the model picked above
    const model = typeof parsed.request.model === "string" ? parsed.request.model : pickedModel();
    const request = model ? { ...parsed.request, model } : parsed.request;
    const results = await Promise.all(DECODERS.map((decoder) => call("POST", "/v1/rerank",
      { ...request, decoder, return_reasoning: true, return_passes: true })));
    const answers = Object.fromEntries(DECODERS.map((d, i) => [d, results[i]]));
    const names = await lookUpItems(request, results, model);
    DECODERS.forEach((d) => renderPanel(d, answers, request, names));
    const done = DECODERS.filter((d) => answers[d].ok);
    $("replay-both-controls").hidden = done.length !== DECODERS.length;
    $("timing-note").hidden = done.length !== DECODERS.length;
    const parts = done.map((d) => {
      const u = answers[d].data.usage;
      return `${TITLES[d]}: ${u.generated_tokens} tokens in ${u.forward_passes} passes`;
    });
    const failed = DECODERS.length - done.length;
    setStatus(`${parts.join("; ")}${failed ? `${parts.length ? "; " : ""}${failed} decoder${failed > 1 ? "s" : ""} failed (see below)` : ""}.` +
      (names.note ? ` ${names.note}` : ""));
  } catch (err) {
    // a bug in rendering must still leave a message, never a blank panel
    DECODERS.forEach((d) => showPanelError(d, `The page failed to show the answer: ${err.message}`));
    setStatus("");
  } finally {
    busy = false;
    $("compare").disabled = false;
  }
}

function playBoth() {
  DECODERS.forEach((d) => startReplay(d, 0));
}

document.addEventListener("DOMContentLoaded", () => {
  $("draw").addEventListener("click", drawExample);
  $("compare").addEventListener("click", compare);
  $("play-both").addEventListener("click", playBoth);
  $("model").addEventListener("change", pickModel);
  loadModels();
  drawExample();
});
