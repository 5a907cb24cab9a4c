// The service graph: clusters as columns, namespaces inside them, pods as
// points, destinations outside the federation (by DNS name or address) in
// a last column; flows as edges, red when any flow of the edge was
// denied. No library, no CDN.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let selected = decodeURIComponent((location.hash.match(/^#select=(.*)$/) || [])[1] || "");
let lastGraph = null;

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// layout places every node: returns id -> {x, y} for points and draws boxes.
function layout(svg, nodes) {
  const kids = {};
  for (const n of nodes) (kids[n.parent || ""] = kids[n.parent || ""] || []).push(n);
  const pos = {};
  const colW = 260, podH = 34, top = 30;
  let x = 20;
  const clusters = (kids[""] || []).filter((n) => n.kind === "cluster");
  const externals = (kids[""] || []).filter((n) => n.kind === "external");
  for (const c of clusters) {
    const g = el("g", { class: "cluster", "data-node": c.id }, svg);
    const rect = el("rect", { x, y: top, width: colW - 20, rx: 6 }, g);
    el("text", { x: x + 8, y: top + 16, class: "box-label" }, g).textContent = "cluster " + c.label;
    let y = top + 28;
    for (const ns of kids[c.id] || []) {
      const ng = el("g", { class: "namespace", "data-node": ns.id }, g);
      const pods = kids[ns.id] || [];
      const h = 24 + pods.length * podH;
      el("rect", { x: x + 10, y, width: colW - 40, height: h, rx: 4 }, ng);
      el("text", { x: x + 18, y: y + 15, class: "box-label" }, ng).textContent = "namespace " + ns.label;
      let py = y + 24 + podH / 2;
      for (const p of pods) {
        const pg = el("g", { class: "workload", "data-node": p.id }, ng);
        el("circle", { cx: x + 34, cy: py, r: 7 }, pg);
        el("text", { x: x + 46, y: py + 4 }, pg).textContent = p.label;
        pos[p.id] = { x: x + 34, y: py };
        py += podH;
      }
      y += h + 10;
    }
    rect.setAttribute("height", y - top);
    x += colW;
  }
  let y = top + 40;
  for (const e of externals) {
    // A destination named by DNS stands for the addresses it resolved to.
    const pg = el("g", { class: "external" + (e.addresses ? " named" : ""), "data-node": e.id }, svg);
    el("circle", { cx: x + 20, cy: y, r: 7 }, pg);
    el("text", { x: x + 32, y: y + 4 }, pg).textContent = e.label;
    if (e.addresses) el("title", {}, pg).textContent = `${e.label}: ${e.addresses.join(", ")}`;
    pos[e.id] = { x: x + 20, y };
    y += podH;
  }
  svg.setAttribute("viewBox", `0 0 ${Math.max(x + 220, 600)} ${Math.max(y, 400) + 200}`);
  return pos;
}

function draw(g) {
  const svg = $("graph");
  svg.replaceChildren();
  const defs = el("defs", {}, svg);
  for (const v of ["allowed", "denied"]) {
    // Sized in the drawing's units, so a selected (thicker) edge keeps a
    // normal arrowhead.
    const m = el("marker", { id: "arrow-" + v, viewBox: "0 0 10 10", refX: 18, refY: 5, markerWidth: 10, markerHeight: 10,
      markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-" + v }, m);
  }
  const pos = layout(svg, g.nodes);
  const layer = el("g", { class: "edges" }, svg);
  g.edges.forEach((e, i) => {
    const a = pos[e.src], b = pos[e.dst];
    if (!a || !b) return;
    // Bend each edge sideways (perpendicular to the line between its ends),
    // by a little more for every edge, so edges of one column stay apart.
    const bend = 40 + (i % 5) * 14;
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const mx = (a.x + b.x) / 2 + (dy / len) * bend, my = (a.y + b.y) / 2 - (dx / len) * bend;
    const path = el("path", {
      class: "edge" + (e.id === selected ? " selected" : ""), d: `M${a.x},${a.y} Q${mx},${my} ${b.x},${b.y}`,
      "data-edge": e.id, "data-verdict": e.verdict, "data-src": e.src, "data-dst": e.dst,
      "marker-end": `url(#arrow-${e.verdict})`,
    }, layer);
    el("title", {}, path).textContent = `${e.src} → ${e.dst} ${e.proto}/${e.port}: ${e.allowed} allowed, ${e.denied} denied`;
    el("text", { x: (mx + (a.x + b.x) / 2) / 2, y: (my + (a.y + b.y) / 2) / 2, class: "edge-label" }, layer).textContent =
      `${e.proto}/${e.port} ✓${e.allowed}` + (e.denied ? ` ✗${e.denied}` : "");
    path.addEventListener("click", () => select(e));
  });
  $("who").textContent = "as " + g.principal;
  $("status").textContent = `${g.edges.length} edges, ${g.stored} flows stored` + (g.dropped ? `, ${g.dropped} dropped` : "");
}

function edgeQuery(e) {
  const q = { src: e.src, dst: e.dst, proto: e.proto, port: e.port, since: $("since").value };
  if (e.dstIp) q.ip = e.dstIp; // Reach decides on an address, not a name
  return new URLSearchParams(q).toString();
}

async function select(e) {
  selected = e.id;
  history.replaceState(null, "", "#select=" + encodeURIComponent(e.id));
  for (const p of document.querySelectorAll(".edge")) p.classList.toggle("selected", p.dataset.edge === e.id);
  const panel = $("panel");
  panel.hidden = false;
  panel.dataset.edge = e.id;
  $("edge-title").textContent = `${e.src} → ${e.dst} ${e.proto}/${e.port}`;
  $("edge-counts").textContent = `${e.allowed} allowed, ${e.denied} denied` +
    (e.deniedBy && e.deniedBy.length ? ` — denied by ${e.deniedBy.join(", ")}` : "") +
    (e.stagedDenied ? ` — ${e.stagedDenied} would be denied by staged ${(e.stagedBy || []).join(", ")}` : "");
  const q = edgeQuery(e);
  const [flows, reach] = await Promise.allSettled([getJSON("/api/flows?" + q), getJSON("/api/reach?" + q)]);
  const tbody = $("flows").querySelector("tbody");
  tbody.replaceChildren();
  for (const f of flows.status === "fulfilled" ? flows.value : []) {
    const tr = document.createElement("tr");
    for (const [v, cls] of [[f.time, ""], [f.node, ""], [f.verdict, "v-" + f.verdict], [f.decision + (f.staged ? "; " + f.staged : ""), ""]]) {
      const td = document.createElement("td");
      td.textContent = v;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  const r = $("reach");
  if (reach.status === "fulfilled") {
    const v = reach.value;
    r.dataset.verdict = v.verdict;
    r.replaceChildren();
    for (const line of [`${v.verdict} (revision ${v.revision})`, v.egress, v.ingress]) {
      const p = document.createElement("p");
      p.textContent = line;
      r.appendChild(p);
    }
  } else {
    r.textContent = "reach: " + reach.reason.message;
  }
}

async function refresh() {
  try {
    const g = await getJSON("/api/graph?since=" + encodeURIComponent($("since").value));
    lastGraph = g;
    draw(g);
    const e = g.edges.find((x) => x.id === selected);
    if (e && $("panel").dataset.edge !== e.id) await select(e);
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("status").textContent = "error: " + err.message;
  }
}

$("since").addEventListener("change", refresh);
refresh();
setInterval(refresh, 3000);
