// The training console page: one WebSocket for state, frames, commands and teleop; curves over HTTP.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;

const TELEOP_HZ = 25;
const AXES = ["x", "y", "z", "roll", "pitch", "yaw"];
// event.code -> [axis index, sign]
const KEY_AXES = {
  KeyW: [0, 1], KeyS: [0, -1], KeyA: [1, 1], KeyD: [1, -1], KeyR: [2, 1], KeyF: [2, -1],
  ArrowLeft: [3, -1], ArrowRight: [3, 1], ArrowUp: [4, 1], ArrowDown: [4, -1], KeyQ: [5, 1], KeyE: [5, -1],
};
const GRIPPER_KEYS = { Space: "close", ShiftLeft: "open", ShiftRight: "open" };
const PALETTE = ["#58a6ff", "#f0883e", "#3fb950", "#d2a8ff", "#ff7b72", "#e3b341", "#79c0ff"];

const state = {
  ws: null, client: null, holding: false, paused: false, last: null, timeout: 0.5,
  keys: new Set(), teleopTimer: null, teleopAt: 0, arm: null, images: {}, runs: {}, curves: {}, xaxis: "by_steps",
};

// ---- the socket ----------------------------------------------------------------------------------------
function connect() {
  const url = new URL(withToken("ws"), location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => setConn("connected", "good");
  ws.onclose = () => {
    setConn("disconnected: reconnecting…", "bad");
    stopTeleop();
    state.client = null;
    setTimeout(connect, 1000);
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onText(JSON.parse(event.data));
    else onFrame(event.data);
  };
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function setConn(text, kind) {
  const el = $("conn");
  el.textContent = text;
  el.className = `badge ${kind}`;
}

function onText(msg) {
  if (msg.type === "hello") {
    state.client = msg.client;
    state.timeout = msg.teleop_timeout_s;
    $("client-id").textContent = msg.client;
    $("teleop-timeout").textContent = msg.teleop_timeout_s;
  } else if (msg.type === "state") {
    onState(msg);
  } else if (msg.type === "teleop") {
    state.teleopAt = msg.server_time;
    setHolding(msg.granted);
    showHolder(msg.holder, msg.holder === state.client);
    if (!msg.granted && msg.holder && msg.holder !== state.client) note(`the teleop is held by ${msg.holder}`, true);
  } else if (msg.type === "error") {
    note(msg.error, true);
  } else if (msg.type === "ok") {
    note(`sent: ${msg.name.replace("_", " ")}`);
  }
}

function note(text, error = false) {
  const box = $("messages");
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (error) line.className = "error";
  box.prepend(line);
  while (box.children.length > 5) box.lastChild.remove();
}

// ---- frames --------------------------------------------------------------------------------------------
function onFrame(buffer) {
  const length = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const blob = new Blob([new Uint8Array(buffer, 4 + length)], { type: "image/jpeg" });
  const key = `${header.kind === "policy" ? 0 : 1}:${header.camera}`;  // policy views first, then full frames
  let img = state.images[key];
  if (!img) {
    $("no-cameras")?.remove();
    const figure = document.createElement("figure");
    img = document.createElement("img");
    img.dataset.camera = header.camera;
    img.dataset.kind = header.kind;
    img.className = header.kind;
    img.alt = `${header.camera} (${header.kind})`;
    const caption = document.createElement("figcaption");
    figure.append(img, caption);
    const figures = [...$("cameras").children];
    const before = figures.find((f) => f.dataset.key > key);
    figure.dataset.key = key;
    $("cameras").insertBefore(figure, before || null);
    state.images[key] = img;
  }
  const previous = img.src;
  img.src = URL.createObjectURL(blob);
  img.dataset.seq = header.seq;
  img.nextSibling.textContent = `${header.camera} · ${header.kind === "policy" ? "policy view" : "full frame"} · ${header.width}×${header.height}`;
  if (previous) URL.revokeObjectURL(previous);
}

// ---- state ---------------------------------------------------------------------------------------------
const fmt = (v, digits = 3) => v === null || v === undefined ? "—" :
  typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(digits)) :
  typeof v === "boolean" ? (v ? "yes" : "no") : Array.isArray(v) ? v.map((x) => fmt(x, digits)).join(", ") :
  typeof v === "object" ? Object.entries(v)  // a health record: its scalar fields, nested ones (the box) are shown apart
    .filter(([, x]) => x === null || typeof x !== "object")
    .map(([k, x]) => `${k.replaceAll("_", " ")}: ${fmt(x, 2)}`).join(" · ") : String(v);

function fill(dl, rows) {
  dl.replaceChildren(...rows.flatMap(([name, value, cls]) => {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (cls === "arm") dt.className = cls;  // a heading row: one arm's entries follow
    else if (cls) dd.className = cls;
    return [dt, dd];
  }));
}

function onState(msg) {
  state.last = msg;
  state.paused = msg.paused;
  const v = msg.view;
  $("paused-badge").hidden = !msg.paused;
  const pause = $("btn-pause");
  pause.textContent = msg.paused ? "Resume" : "Pause";
  pause.dataset.command = msg.paused ? "resume" : "pause";
  showHolder(msg.teleop.holder, msg.teleop.you_hold, msg.teleop.live);
  // a state built before this page's claim was granted may arrive after the grant: it does not end the hold
  if (state.holding && !msg.teleop.you_hold && msg.server_time > state.teleopAt) setHolding(false);
  $("frame-age").textContent = msg.age_s === null ? "" : `step ${v.step} · ${Math.round(1000 * msg.age_s)} ms old`;
  if (v) {
    const acting = $("acting");
    acting.textContent = `${v.acting} acting`.replace("paused acting", "paused").replace("held acting", "robot held");
    acting.className = `badge ${{ human: "human", policy: "good", paused: "warn", held: "warn" }[v.acting] || ""}`;
    fill($("episode"), [
      ["env step", fmt(v.step)], ["episode", fmt(v.episode)], ["episode step", fmt(v.episode_step)],
      ["reward", fmt(v.reward)], ["return", fmt(v.episode_return)],
      ["success", fmt(v.success), v.success ? "good" : ""], ["acting", v.acting],
    ]);
    const arms = Object.entries(v.arms || {});
    showArmChoices(arms.length > 1 ? arms.map(([name]) => name) : []);
    const stopped = arms.some(([, arm]) => { const g = arm.guard || {}; return Boolean(g.safety_stop || g.safety_stop_active || g.stopped); });
    $("stop-badge").hidden = !stopped;
    const rows = [];
    for (const [name, arm] of arms) {
      if (arms.length > 1) rows.push([name, "", "arm"]);
      rows.push(
        ["position", arm.tcp_pose ? fmt(arm.tcp_pose.slice(0, 3)) : "—"],
        ["orientation", arm.tcp_pose ? fmt(arm.tcp_pose.slice(3), 3) : "—"],
        ["target", arm.target_pose ? fmt(arm.target_pose.slice(0, 3)) : "—"],
        ["gripper", fmt(arm.gripper)],
        ["safety box", arm.safety_box ? `${fmt(arm.safety_box.low)} … ${fmt(arm.safety_box.high)}` : "none"],
      );
      for (const [key, value] of Object.entries(arm.guard || {})) {
        const bad = /stop|fault|error|expired|tripped/i.test(key) && value && value !== "ok";
        rows.push([key.replaceAll("_", " "), fmt(value), bad ? "bad" : ""]);
      }
    }
    fill($("robot"), rows.length ? rows : [["robot", "no robot state"]]);
    drawBoxes(arms);
  }
  const learner = msg.learner || {};
  const known = ["updates", "updates_per_s", "online_buffer", "demo_buffer", "buffer", "critic_loss", "temperature",
    "weights_version", "training", "phase"];
  const rows = [];
  for (const name of known) if (name in learner) rows.push([name.replaceAll("_", " "), fmt(learner[name])]);
  for (const [name, value] of Object.entries(learner)) if (!known.includes(name)) rows.push([name.replaceAll("_", " "), fmt(value)]);
  if (v) rows.push(["weights in use", `v${fmt(v.weights_version)} · ${v.weights_age_s === null ? "—" : fmt(v.weights_age_s, 1) + " s old"}`]);
  fill($("learner"), rows.length ? rows : [["status", "no learner status yet"]]);
}

function showHolder(holder, mine, live) {
  $("holder").textContent = holder ? (mine ? `this page (${holder})` : holder) + (live === false ? " (silent)" : "") : "nobody";
  $("teleop-status").textContent = mine ? "you hold the teleop" : holder ? `held by ${holder}` : "the policy acts";
}

function drawBoxes(arms) {
  // per arm, in its own base frame: a row of two views, top (x right, y up) and side (x right, z up)
  const canvas = $("box-view");
  const rowHeight = 150;
  canvas.height = rowHeight * Math.max(arms.length, 1);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!arms.some(([, arm]) => arm.safety_box && arm.safety_box.low && arm.safety_box.high)) {
    ctx.fillStyle = "#8a96a6";
    ctx.fillText("no safety box", 10, 20);
    return;
  }
  arms.forEach(([name, arm], row) => {
    const box = arm.safety_box;
    if (!box || !box.low || !box.high) return;
    const views = [[0, 1, "top (x, y)"], [0, 2, "side (x, z)"]];
    views.forEach(([a, b, label], i) => {
      const x0 = 10 + i * 155, y0 = row * rowHeight + 18, w = 140, h = 120;
      const span = (k) => (box.high[k] - box.low[k]) || 1;
      const px = (p) => x0 + ((p[a] - box.low[a]) / span(a)) * w;
      const py = (p) => y0 + h - ((p[b] - box.low[b]) / span(b)) * h;
      ctx.strokeStyle = "#8a96a6";
      ctx.strokeRect(x0, y0, w, h);
      ctx.fillStyle = "#8a96a6";
      ctx.fillText(arms.length > 1 ? `${name}: ${label}` : label, x0, y0 - 6);
      if (arm.target_pose) {
        ctx.strokeStyle = "#d29922";
        const tx = px(arm.target_pose), ty = py(arm.target_pose);
        ctx.beginPath(); ctx.moveTo(tx - 5, ty - 5); ctx.lineTo(tx + 5, ty + 5); ctx.moveTo(tx + 5, ty - 5); ctx.lineTo(tx - 5, ty + 5); ctx.stroke();
      }
      if (arm.tcp_pose) {
        ctx.fillStyle = "#58a6ff";
        ctx.beginPath(); ctx.arc(px(arm.tcp_pose), py(arm.tcp_pose), 4, 0, 2 * Math.PI); ctx.fill();
      }
    });
  });
}

// ---- buttons -------------------------------------------------------------------------------------------
for (const button of document.querySelectorAll("button[data-command]")) {
  button.addEventListener("click", () => send({ type: "command", name: button.dataset.command }));
}

$("btn-teleop").addEventListener("click", () => {
  if (state.holding) release();
  else send({ type: "claim_teleop" });
});

function release() {
  send({ type: "teleop", twist: [0, 0, 0, 0, 0, 0], gripper: null, active: false });
  send({ type: "release_teleop" });
  setHolding(false);
}

// ---- teleop --------------------------------------------------------------------------------------------
function setHolding(holding) {
  if (holding === state.holding) return;
  state.holding = holding;
  const button = $("btn-teleop");
  button.textContent = holding ? "Release control" : "Take control";
  button.classList.toggle("holding", holding);
  if (holding) {
    sendInput();
    state.teleopTimer = setInterval(sendInput, 1000 / TELEOP_HZ);
  } else {
    stopTeleop();
  }
}

function stopTeleop() {
  state.holding = false;
  clearInterval(state.teleopTimer);
  state.teleopTimer = null;
  const button = $("btn-teleop");
  button.textContent = "Take control";
  button.classList.remove("holding");
  drawTwist([0, 0, 0, 0, 0, 0]);
}

const clamp = (x) => Math.max(-1, Math.min(1, x));
const dead = (x) => Math.abs(x) < 0.12 ? 0 : x;

function currentInput() {
  const twist = [0, 0, 0, 0, 0, 0];
  let gripper = null;
  for (const code of state.keys) {
    if (code in KEY_AXES) twist[KEY_AXES[code][0]] += KEY_AXES[code][1];
    if (code in GRIPPER_KEYS) gripper = GRIPPER_KEYS[code];
  }
  const pad = gamepad();
  if (pad) {
    // left stick: x (forward) and y (left); right stick: z and yaw; bumpers: roll; A closes, B opens
    const ax = (i) => dead(pad.axes[i] || 0);
    const pressed = (i) => Boolean(pad.buttons[i] && pad.buttons[i].pressed);
    twist[0] += -ax(1); twist[1] += -ax(0); twist[2] += -ax(3); twist[5] += -ax(2);
    twist[3] += (pressed(5) ? 1 : 0) - (pressed(4) ? 1 : 0);
    if (pressed(0)) gripper = "close";
    if (pressed(1)) gripper = "open";
  }
  const clamped = twist.map((x) => Math.round(clamp(x) * 1000) / 1000);
  return { twist: clamped, gripper, active: clamped.some((x) => x !== 0) || gripper !== null };
}

function showArmChoices(names) {
  // a two-arm robot: the page drives one arm at a time, named in each teleop message
  const box = $("arm-choices");
  if (box.dataset.names === names.join(",")) return;
  box.dataset.names = names.join(",");
  box.replaceChildren(...names.map((name) => {
    const label = document.createElement("label");
    const radio = document.createElement("input");
    Object.assign(radio, { type: "radio", name: "arm", value: name, id: `arm-${name}` });
    radio.addEventListener("change", () => chooseArm(name));
    label.append(radio, ` ${name} `);
    return label;
  }));
  $("arm-select").hidden = !names.length;
  chooseArm(names.includes(state.arm) ? state.arm : names[0] || null);
}

function chooseArm(name) {
  state.arm = name;
  if (name) $(`arm-${name}`).checked = true;
  if (state.holding) sendInput();
}

function gamepad() {
  const pads = navigator.getGamepads ? [...navigator.getGamepads()].filter(Boolean) : [];
  $("gamepad").textContent = pads.length ? `gamepad: ${pads[0].id}` : "no gamepad (press a button on one to use it)";
  return pads[0] || null;
}

function sendInput() {
  if (!state.holding) return;
  const input = currentInput();
  send({ type: "teleop", ...input, ...(state.arm ? { arm: state.arm } : {}) });
  drawTwist(input.twist, input.gripper);
}

function drawTwist(twist, gripper = null) {
  const box = $("twist");
  if (!box.children.length) {
    for (const name of AXES) {
      const label = document.createElement("span");
      label.textContent = name;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.append(document.createElement("i"));
      box.append(label, bar);
    }
  }
  AXES.forEach((_, i) => {
    const bar = box.children[2 * i + 1].firstChild;
    const v = twist[i];
    bar.style.left = `${50 + Math.min(0, v) * 50}%`;
    bar.style.width = `${Math.abs(v) * 50}%`;
  });
  $("teleop-gripper").textContent = `gripper: ${gripper || "—"}`;
}

const typing = (event) => ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) && event.target.type !== "radio" && event.target.type !== "checkbox";
window.addEventListener("keydown", (event) => {
  if (typing(event)) return;
  if (event.code === "Escape" && state.holding) { release(); return; }
  if (event.code === "Tab" && state.holding && state.arm) {
    event.preventDefault();
    const names = $("arm-choices").dataset.names.split(",");
    chooseArm(names[(names.indexOf(state.arm) + 1) % names.length]);
    return;
  }
  if (!state.holding || !(event.code in KEY_AXES || event.code in GRIPPER_KEYS)) return;
  event.preventDefault();  // no scrolling on arrows and space while driving
  if (!state.keys.has(event.code)) {
    state.keys.add(event.code);
    sendInput();
  }
});
window.addEventListener("keyup", (event) => {
  if (state.keys.delete(event.code) && state.holding) sendInput();
});
window.addEventListener("blur", () => state.keys.clear());
window.addEventListener("gamepadconnected", gamepad);
window.addEventListener("pagehide", () => { if (state.holding) release(); });

// ---- curves --------------------------------------------------------------------------------------------
document.querySelectorAll("input[name=xaxis]").forEach((radio) => radio.addEventListener("change", () => {
  state.xaxis = radio.value;
  drawCurves();
}));

async function getJSON(path) {
  const response = await fetch(withToken(path), { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function refreshCurves() {
  try {
    state.curves[""] = await getJSON("api/curves");
    for (const id of Object.keys(state.runs)) {
      if (state.runs[id].checked && !state.curves[id]) state.curves[id] = await getJSON(`api/curves?run=${encodeURIComponent(id)}`);
    }
    drawCurves();
  } catch (err) {
    $("curves-note").textContent = String(err);
  }
  const summary = await fetch(withToken("summary.png"), { method: "HEAD" }).catch(() => null);
  $("summary").hidden = !(summary && summary.ok);
}

async function refreshRuns() {
  let listing;
  try { listing = await getJSON("api/runs"); } catch (err) { return; }
  const box = $("runs");
  box.replaceChildren();
  if (!listing.runs.length) return;
  box.append("compare with: ");
  listing.runs.slice(0, 12).forEach((run) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(state.runs[run.id] && state.runs[run.id].checked);
    state.runs[run.id] = input;
    input.addEventListener("change", () => {
      if (!input.checked) delete state.curves[run.id];
      refreshCurves();
    });
    const rate = run.success_rate === null || run.success_rate === undefined ? "" : `, ${Math.round(100 * run.success_rate)} %`;
    label.append(input, ` ${run.id} (${run.episodes} ep${rate})`);
    box.append(label);
  });
}

function drawCurves() {
  const current = state.curves[""] || {};
  $("curves-note").textContent = state.xaxis === "by_time" && current.wall_time_note ? current.wall_time_note :
    current.episodes === undefined ? "no curves (yet)" : `${current.episodes} episodes` + (current.discarded ? `, ${current.discarded} discarded` : "");
  const lines = Object.entries(state.curves).map(([id, curves], i) => ({ id: id || "this run", curves, color: PALETTE[i % PALETTE.length] }));
  for (const canvas of document.querySelectorAll("canvas.plot")) {
    const series = canvas.dataset.series;
    plot(canvas, lines.map(({ id, curves, color }) => {
      const data = curves && curves[state.xaxis];
      if (!data || !data[series]) return { id, color, points: [] };
      let xs = state.xaxis === "by_time" ? data.time : data.env_steps;
      if (state.xaxis === "by_time" && xs.length) xs = xs.map((t) => (t - xs[0]) / 60);  // minutes from the first episode
      const points = xs.map((x, k) => [x, data[series][k]]).filter(([x, y]) => x !== null && y !== null);
      return { id, color, points };
    }), state.xaxis === "by_time" ? "minutes" : "env steps", ["success_rate", "intervention_rate"].includes(series));
  }
}

function plot(canvas, lines, xlabel, unit) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 44, R = 8, T = 8, B = 28;
  ctx.clearRect(0, 0, W, H);
  const all = lines.flatMap((line) => line.points);
  ctx.fillStyle = "#8a96a6";
  ctx.font = "11px system-ui, sans-serif";
  if (!all.length) { ctx.fillText("no data", L, H / 2); return; }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = unit ? [0, 1] : [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#2e3540";
  ctx.beginPath();
  for (let k = 0; k <= 4; k++) {
    const y = y0 + (k / 4) * (y1 - y0);
    ctx.moveTo(L, sy(y)); ctx.lineTo(W - R, sy(y));
    ctx.fillText(fmtTick(y), 2, sy(y) + 4);
  }
  ctx.stroke();
  ctx.fillText(fmtTick(x0), L, H - 12);
  const right = fmtTick(x1);
  ctx.fillText(right, W - R - ctx.measureText(right).width, H - 12);
  ctx.fillText(xlabel, (W - ctx.measureText(xlabel).width) / 2, H - 2);
  for (const line of lines) {
    if (!line.points.length) continue;
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    line.points.forEach(([x, y], k) => (k ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
    ctx.stroke();
    if (line.points.length === 1) ctx.fillRect(sx(line.points[0][0]) - 2, sy(line.points[0][1]) - 2, 4, 4);
  }
  ctx.lineWidth = 1;
  if (lines.length > 1) lines.forEach((line, i) => {
    ctx.fillStyle = line.color;
    ctx.fillText(line.id, L + 6, T + 12 + 12 * i);
  });
}

function fmtTick(v) {
  const a = Math.abs(v);
  return a >= 1e4 ? `${(v / 1000).toFixed(0)}k` : a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(1) : v.toFixed(2);
}

// ---- start ---------------------------------------------------------------------------------------------
drawTwist([0, 0, 0, 0, 0, 0]);
connect();
refreshRuns().then(refreshCurves);
setInterval(refreshCurves, 10000);
setInterval(refreshRuns, 30000);
setInterval(gamepad, 2000);
