// The Gibsey node dashboard: plain JS, no build step. Live through server-sent events
// (/api/events/stream); changes go through the REST API with the write token, which is kept in
// this browser's localStorage only.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { symbols: [], rotations: ["read", "write", "remember", "dream"], events: 0 };
const MAX_EVENTS = 150;

function token() { return $("#token").value.trim(); }
$("#token").value = localStorage.getItem("gibsey-token") || "";
$("#token").addEventListener("change", () => localStorage.setItem("gibsey-token", token()));

function headers() {
  const h = { "Content-Type": "application/json" };
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function text(el, value) { el.textContent = value; }
function li(html) { const e = document.createElement("li"); e.innerHTML = html; return e; }
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// -- the glyph -------------------------------------------------------------------------------
function showGlyph(g) {
  if (g == null || g.symbol == null) return;
  const sym = state.symbols[g.symbol] || { slug: "symbol " + g.symbol, colour: "#888" };
  const rot = state.rotations[g.rotation] || String(g.rotation);
  const el = $("#glyph");
  el.style.borderColor = sym.colour;
  el.style.color = sym.colour;
  el.dataset.symbol = g.symbol;
  el.dataset.rotation = g.rotation;
  $("#glyph-pointer").style.transform = "rotate(" + g.rotation * 90 + "deg)";
  text($("#glyph-slug"), sym.slug);
  text($("#glyph-rotation"), rot);
  text($("#glyph-state"), "state " + (g.symbol * 4 + g.rotation) + (g.actor ? " · by " + g.actor : ""));
  $("#dial-symbol").value = String(g.symbol);
}

function showRitual(p) {
  text($("#glyph-ritual"), "ritual: program " + (p.program || "none") + ", " + p.effects +
    " effect(s), fuel " + p.fuel + (p.error ? " — " + p.error : ""));
}

async function rotate(rotation) {
  const symbol = Number($("#dial-symbol").value);
  const r = await fetch("/api/glyph/rotate", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ symbol, rotation, source: "dashboard", actor: "dashboard" }),
  });
  const body = await r.json().catch(() => ({}));
  text($("#dial-result"), r.ok ? "turned: event " + body.event.slice(0, 8) : "refused: " + (body.error || r.status));
}

// -- event stream ----------------------------------------------------------------------------
function summary(ev) {
  const p = ev.payload || {};
  switch (ev.kind) {
    case "glyph/rotated": return (state.symbols[p.symbol] || {}).slug + " " + state.rotations[p.rotation];
    case "ritual/performed": return "state " + p.state + " program " + p.program + (p.error ? " ERROR " + p.error : "");
    case "gift/txn": return p.type + " " + (p.giver ? p.giver + " → " : "") + p.receiver + " " + p.amount;
    case "agent/emit": return p.persona + (p.final ? " (final)" : "") + ": " + p.text;
    case "safety/alert": return p.severity + " " + p.reason + " " + (p.detail || "");
    default: return JSON.stringify(p);
  }
}

function addEvent(ev) {
  state.events += 1;
  text($("#event-count"), "(" + state.events + ")");
  const list = $("#events");
  const item = li('<span class="kind">' + esc(ev.kind) + "</span> " + esc(ev.actor) + " · " + esc(summary(ev)));
  item.dataset.kind = ev.kind;
  item.title = ev.id;
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function onEvent(ev) {
  addEvent(ev);
  const mine = ev.node === state.node;
  if (ev.kind === "glyph/rotated" && mine) showGlyph({ ...ev.payload, actor: ev.actor });
  if (ev.kind === "ritual/performed" && mine) showRitual(ev.payload);
  if (ev.kind === "gift/txn" || ev.kind.startsWith("hearing/")) scheduleLedger();
  if (ev.kind === "mesh/peer") refreshMesh();
}

function connect(kinds) {
  const es = new EventSource("/api/events/stream?recent=30");
  es.addEventListener("hello", (m) => {
    const hello = JSON.parse(m.data);
    showGlyph(hello.glyph);
    if (hello.glyph && hello.glyph.ritual) showRitual(hello.glyph.ritual);
    const c = $("#conn");
    c.className = "pill ok"; c.dataset.state = "live"; text(c, "live");
  });
  for (const kind of kinds) es.addEventListener(kind, (m) => onEvent(JSON.parse(m.data)));
  es.addEventListener("bye", () => es.close());
  es.onerror = () => { const c = $("#conn"); c.className = "pill bad"; c.dataset.state = "reconnecting"; text(c, "reconnecting…"); };
}

// -- chat ------------------------------------------------------------------------------------
async function ask(ev) {
  ev.preventDefault();
  const persona = $("#chat-persona").value;
  const prompt = $("#chat-prompt").value.trim();
  if (!prompt) return;
  const log = $("#chat-log");
  const q = document.createElement("div"); q.className = "q"; q.textContent = persona + " ← " + prompt;
  const a = document.createElement("div"); a.className = "a"; a.dataset.state = "streaming";
  log.append(q, a);
  $("#chat-prompt").value = "";
  const r = await fetch("/api/agent/ask", {
    method: "POST", headers: headers(), body: JSON.stringify({ persona, prompt, actor: "dashboard" }),
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    a.textContent = "(" + (body.error || r.status) + ")"; a.dataset.state = "error";
    return;
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [null, "{}"])[1]);
      if (kind === "token") a.textContent += data.text;
      else if (kind === "done") { a.textContent = data.text; a.dataset.state = "done"; }
      else if (kind === "error") { a.textContent += " (" + data.error + ")"; a.dataset.state = "error"; }
      log.scrollTop = log.scrollHeight;
    }
  }
}

// -- ledger and mesh ----------------------------------------------------------------------------
let ledgerTimer = null;
function scheduleLedger() { clearTimeout(ledgerTimer); ledgerTimer = setTimeout(refreshLedger, 150); }

async function refreshLedger() {
  try {
    const b = await getJSON("/api/ledger/balances");
    const rows = Object.entries(b.balances).slice(0, 20)
      .map(([who, n]) => "<tr><td>" + esc(who) + '</td><td class="n">' + n + "</td></tr>").join("");
    $("#balances tbody").innerHTML = rows || '<tr><td class="muted">no balances yet</td></tr>';
    text($("#supply"), "supply " + b.supply + " (minted " + b.minted + ", burned " + b.burned + ")");
    const hs = await getJSON("/api/ledger/proposals");
    const list = $("#hearings"); list.innerHTML = "";
    for (const h of hs) {
      list.append(li("<b>" + esc(h.title) + "</b> " + esc(h.action) + " · " + esc(h.status) +
        " · yes " + h.yes + " / no " + h.no + " of " + h.total));
    }
    if (!hs.length) list.append(li('<span class="muted">no open hearings</span>'));
  } catch (e) { text($("#supply"), String(e.message || e)); }
}

async function refreshMesh() {
  try {
    const m = await getJSON("/api/mesh/peers");
    text($("#mesh-self"), "this node " + m.key.slice(0, 12) + " · " + m.entries + " entries in " + m.feeds + " feeds");
    const list = $("#peers"); list.innerHTML = "";
    for (const p of m.peers) {
      list.append(li('<span class="state-' + esc(p.state) + '">' + esc(p.state) + "</span> " + esc(p.key.slice(0, 12)) +
        " " + esc(p.endpoint) + (p.we_lack != null ? " · we lack " + p.we_lack + ", they lack " + p.they_lack : "")));
    }
    if (!m.peers.length) list.append(li('<span class="muted">no peers</span>'));
  } catch (e) { text($("#mesh-self"), String(e.message || e)); }
}

async function refreshStatus() {
  try {
    const s = await getJSON("/api/status");
    text($("#rate"), s.events_per_s + " events/s · " + s.events_total + " events · up " + Math.round(s.uptime_s) + " s");
  } catch (e) { /* the stream shows the connection state */ }
}

// -- start ---------------------------------------------------------------------------------------
async function main() {
  const [status, syms, people] = await Promise.all([
    getJSON("/api/status"), getJSON("/api/symbols"), getJSON("/api/agent/personas"),
  ]);
  state.node = status.node;
  state.symbols = syms.symbols;
  state.rotations = syms.rotations;
  text($("#node-id"), status.node);
  const sel = $("#dial-symbol");
  for (const s of syms.symbols) {
    const o = document.createElement("option"); o.value = s.id; o.textContent = s.id + " " + s.slug; sel.append(o);
  }
  const ps = $("#chat-persona");
  for (const p of people.personas) { const o = document.createElement("option"); o.value = p; o.textContent = p; ps.append(o); }
  if (!people.running) $("#chat-send").title = "the agents part is not running";
  for (const b of document.querySelectorAll("[data-rotation]")) {
    b.addEventListener("click", () => rotate(Number(b.dataset.rotation)));
  }
  $("#chat-form").addEventListener("submit", ask);
  showGlyph(status.glyph);
  connect(status.kinds);
  refreshLedger(); refreshMesh(); refreshStatus();
  setInterval(refreshStatus, 2000);
  setInterval(refreshMesh, 5000);
  setInterval(refreshLedger, 10000);
  document.body.dataset.ready = "true";
}

main();
