// A face drawn from the mouth track (docs/mouth-track.md): start a LITE session with mouth_track (and,
// by default, video false: nothing is encoded for it), play its audio, and draw every avatar.mouth_track
// record as it arrives: jaw, lips (open, width, round, closed), teeth, tongue, blinks, gaze, head pose.
// Records come over the WebSocket and the data channel both; the first of each frame is drawn.

import { api, newEventId } from "./api.js";

const $ = (id) => document.getElementById(id);
const state = {
  session: null, pc: null, ws: null, keepAlive: null, last: null, lastFrame: -1, records: 0,
  audioContext: null, analyser: null, level: 0, audioPeak: 0,  // the speech's loudness as it plays
};
const MOUTH_INTERIOR = "#3b0a12";  // nothing else on the canvas is this dark red (see mouthPixels)

function log(text, cls = "") {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  $("log").prepend(li);
  while ($("log").children.length > 200) $("log").lastChild.remove();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
  if (message) log(message, "error");
}

function setStatus(text) {
  $("status").textContent = text;
  $("status").className = `pill ${text}`;
}


// -- the track --------------------------------------------------------------------------------------------
function onTrack(event) {
  const record = event.track;
  if (!record || record.v !== 1 || record.frame <= state.lastFrame) return;  // a copy from the other path
  state.lastFrame = record.frame;
  state.last = record;
  state.records += 1;
  $("records").textContent = String(state.records);
  $("frame").textContent = String(record.frame);
  $("viseme").textContent = record.viseme;
  $("source").textContent = record.source;
  $("jaw").textContent = record.blendshapes.jawOpen.toFixed(2);
}

function onEvent(event, via) {
  if (event.type === "avatar.mouth_track") { onTrack(event); return; }
  if (via === "dc") return;  // the other events come on the WebSocket too
  log(`${event.type}${event.state ? ` ${event.state}` : ""}${event.message ? `: ${event.message}` : ""}`,
    event.type === "error" ? "error" : "");
  if (event.type === "session.state_updated") setStatus(event.state);
  else if (event.type === "agent.speak_started") setStatus("speaking");
  else if (event.type === "agent.speak_ended" || event.type === "agent.speak_interrupted") setStatus("connected");
  else if (event.type === "session.stopped") teardown();
}

// -- drawing --------------------------------------------------------------------------------------------
const REST = {
  open: 0, width: 0, round: 0, closed: 0, teeth: 0, tongue: 0, bite: 0, blink: 0, head_yaw: 0,
  head_pitch: 0, head_roll: 0, gaze_x: 0, gaze_y: 0, brow: 0, smile: 0,
};

function ellipse(ctx, x, y, rx, ry, fill) {
  ctx.beginPath();
  ctx.ellipse(x, y, Math.max(rx, 0.1), Math.max(ry, 0.1), 0, 0, 2 * Math.PI);
  ctx.fillStyle = fill;
  ctx.fill();
}

function drawEye(ctx, x, r) {
  const open = 1 - r.blink;
  ellipse(ctx, x, -28, 21, 13, "#fbfbfb");
  ctx.save();
  ctx.beginPath();
  ctx.ellipse(x, -28, 21, 13, 0, 0, 2 * Math.PI);
  ctx.clip();
  ellipse(ctx, x + 9 * r.gaze_x, -28 + 6 * r.gaze_y, 8, 8, "#2e6fb0");
  ellipse(ctx, x + 9 * r.gaze_x, -28 + 6 * r.gaze_y, 3.5, 3.5, "#0b1a2a");
  // The lids: skin drawn down from above and up from below as the eye closes.
  ctx.fillStyle = "#f0c4a2";
  ctx.fillRect(x - 24, -44, 48, 16 * (1 - open) + 2);
  ctx.fillRect(x - 24, -12 - 10 * (1 - open), 48, 10 * (1 - open));
  ctx.restore();
  ctx.strokeStyle = "#7a4b36";
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.moveTo(x - 21, -28 - 13 + 26 * (1 - open) / 2);
  ctx.quadraticCurveTo(x, -28 - 17 + 26 * (1 - open) / 2, x + 21, -28 - 13 + 26 * (1 - open) / 2);
  ctx.stroke();
  // The brow, raised by `brow`.
  ctx.strokeStyle = "#5a3b2a";
  ctx.lineWidth = 5;
  ctx.beginPath();
  ctx.moveTo(x - 22, -52 - 8 * r.brow);
  ctx.quadraticCurveTo(x, -60 - 10 * r.brow, x + 22, -52 - 8 * r.brow);
  ctx.stroke();
}

function drawMouth(ctx, r) {
  const y = 68;
  const gap = 40 * r.open * (1 - r.closed);  // the jaw: lips apart
  const half = 36 * (1 + 0.35 * r.width - 0.45 * r.round);  // corners: spread, or pulled in to round
  const lift = 6 * Math.min(1, r.smile + 0.5 * r.width);  // corners up for a smile
  ctx.lineJoin = "round";
  if (gap < 1.5) {  // closed: one line (pressed flat for m/b/p)
    ctx.strokeStyle = "#b5535f";
    ctx.lineWidth = 6 + 3 * r.closed;
    ctx.beginPath();
    ctx.moveTo(-half, y - lift);
    ctx.quadraticCurveTo(0, y + 4 * (1 - r.closed), half, y - lift);
    ctx.stroke();
    return;
  }
  const roundness = 0.55 * r.round;  // round lips: the gap becomes an O
  const top = y - gap * (0.35 + 0.15 * roundness);
  const bottom = y + gap * (0.65 + 0.15 * roundness);
  const path = new Path2D();
  path.moveTo(-half, y - lift);
  path.bezierCurveTo(-half * (0.6 - roundness), top, half * (0.6 - roundness), top, half, y - lift);
  path.bezierCurveTo(half * (0.7 - roundness), bottom, -half * (0.7 - roundness), bottom, -half, y - lift);
  path.closePath();
  ctx.fillStyle = MOUTH_INTERIOR;
  ctx.fill(path);
  ctx.save();
  ctx.clip(path);
  const teethH = 9 * Math.max(r.teeth, r.bite);
  if (teethH > 0.5) {  // the upper teeth, below the upper lip
    ctx.fillStyle = "#f4f1ea";
    ctx.fillRect(-half, top - 2, 2 * half, teethH + 2);
  }
  if (r.teeth > 0.3 && gap > 14) {  // the lower ones once the jaw is well open
    ctx.fillStyle = "#e9e4d8";
    ctx.fillRect(-half, bottom - 7 * r.teeth, 2 * half, 8);
  }
  if (r.tongue > 0.02) {  // the tongue tip shows behind the teeth, raised for L, TH
    ellipse(ctx, 0, bottom - gap * 0.2 - 10 * r.tongue, half * 0.55, gap * 0.25 + 6 * r.tongue, "#d9707c");
  }
  ctx.restore();
  ctx.strokeStyle = "#b5535f";
  ctx.lineWidth = 6;
  ctx.stroke(path);
  if (r.bite > 0.3) {  // F/V: the upper teeth rest on the lower lip
    ctx.fillStyle = "#f4f1ea";
    ctx.fillRect(-half * 0.45, y - 2, half * 0.9, 5 * r.bite);
  }
}

function draw() {
  const canvas = $("face");
  const ctx = canvas.getContext("2d");
  const r = state.last ?? REST;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#1d2530";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  // Head pose: roll turns the head on screen, yaw and pitch shift it a little.
  ctx.translate(canvas.width / 2 + 2.5 * r.head_yaw, canvas.height / 2 - 10 + 2 * r.head_pitch);
  ctx.rotate((r.head_roll * Math.PI) / 180);
  const jaw = 40 * r.open * (1 - r.closed);
  ellipse(ctx, 0, 150, 70, 40, "#2d4a6b");  // shoulders
  ellipse(ctx, 0, 92, 34, 40, "#e3b390");  // neck
  ellipse(ctx, 0, 10 + jaw * 0.25, 112, 140 + jaw * 0.25, "#f0c4a2");  // head; the chin drops with the jaw
  ellipse(ctx, 0, -105, 118, 62, "#4a2f22");  // hair
  ellipse(ctx, -58, 40, 16, 9, "rgba(230, 120, 120, " + (0.25 * r.smile).toFixed(3) + ")");  // cheeks
  ellipse(ctx, 58, 40, 16, 9, "rgba(230, 120, 120, " + (0.25 * r.smile).toFixed(3) + ")");
  drawEye(ctx, -44, r);
  drawEye(ctx, 44, r);
  ctx.strokeStyle = "#c99576";  // nose
  ctx.lineWidth = 3;
  ctx.beginPath();
  ctx.moveTo(0, -12);
  ctx.quadraticCurveTo(-10, 22, 0, 30);
  ctx.stroke();
  drawMouth(ctx, r);
  measureLevel();
  requestAnimationFrame(draw);
}

// How many canvas pixels show the inside of the mouth: 0 when the lips are closed (tests read it).
function mouthPixels() {
  const canvas = $("face");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - 0x3b) < 6 && Math.abs(data[i + 1] - 0x0a) < 6 && Math.abs(data[i + 2] - 0x12) < 6) n++;
  }
  return n;
}

// -- the session ----------------------------------------------------------------------------------------
async function start() {
  showError("");
  const key = $("api-key").value.trim();
  if (!key) { showError("Enter an API key (facecast demo prints one)."); return; }
  setLive(true);
  setStatus("connecting");
  try {
    const trackOnly = $("track-only").checked;
    const body = { mode: "LITE", transport: "webrtc", mouth_track: true, video: !trackOnly };
    if (!trackOnly) body.video_settings = { quality: "low" };
    const minted = await api("/v1/sessions/token", { key, body });
    log(`session ${minted.session_id}${trackOnly ? " (track only)" : ""}`);
    const started = await api("/v1/sessions/start", { token: minted.session_token, body: {} });
    state.session = { ...started, token: minted.session_token };
    openSocket(started.ws_url);
    await connectPeer(started, trackOnly);
  } catch (err) {
    showError(err.message);
    await stop();
  }
}

function openSocket(url) {
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.addEventListener("message", (msg) => {
    try { onEvent(JSON.parse(msg.data), "ws"); } catch (err) { log(`bad event: ${err}`, "error"); }
  });
  state.keepAlive = setInterval(() => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "session.keep_alive" }));
  }, 30000);
}

async function connectPeer(started, trackOnly) {
  const pc = new RTCPeerConnection({ iceServers: started.webrtc.ice_servers });
  state.pc = pc;
  pc.addTransceiver("audio", { direction: "recvonly" });
  if (!trackOnly) pc.addTransceiver("video", { direction: "recvonly" });  // sent, but this page draws its own
  const channel = pc.createDataChannel(started.webrtc.data_channel.label, {
    negotiated: true, id: started.webrtc.data_channel.id,
  });
  channel.addEventListener("message", (msg) => {
    try { onEvent(JSON.parse(msg.data), "dc"); } catch (err) { log(`bad data channel event: ${err}`, "error"); }
  });
  const audio = $("audio");
  const stream = new MediaStream();
  audio.srcObject = stream;
  pc.addEventListener("track", (ev) => {
    if (ev.track.kind !== "audio") return;
    stream.addTrack(ev.track);
    audio.play().catch((err) => log(`autoplay blocked: ${err.message}; click the page`, "error"));
    meter(ev.track);
  });
  pc.addEventListener("connectionstatechange", () => log(`webrtc ${pc.connectionState}`));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // host candidates suffice on one machine; wait at most 3 s for more
    if (pc.iceGatheringState === "complete") { resolve(); return; }
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, 3000);
  });
  const answer = await api(started.webrtc.offer_url, {
    token: state.session.token, body: { sdp: pc.localDescription.sdp, type: "offer" },
  });
  await pc.setRemoteDescription(answer);
}

// A level meter on the speech as it plays (Chromium feeds a remote track to Web Audio only while a media
// element plays it too: the <audio> element does).
function meter(track) {
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  context.resume().catch(() => {});
  state.audioContext = context;
  state.analyser = analyser;
}

function measureLevel() {
  if (!state.analyser) return;
  const samples = new Float32Array(state.analyser.fftSize);
  state.analyser.getFloatTimeDomainData(samples);
  let sum = 0;
  for (const x of samples) sum += x * x;
  state.level = Math.sqrt(sum / samples.length);
  state.audioPeak = Math.max(state.audioPeak, state.level);
  $("level").textContent = state.level.toFixed(3);
}

function send(message) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { showError("not connected"); return; }
  state.ws.send(JSON.stringify(message));
  log(`→ ${message.type}${message.text ? `: ${message.text}` : ""}`, "out");
}

function setLive(live) {
  $("start").disabled = live;
  $("stop").disabled = !live;
  for (const id of ["text", "speak", "interrupt"]) $(id).disabled = !live;
}

function teardown() {
  clearInterval(state.keepAlive);
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  if (state.pc) { state.pc.close(); state.pc = null; }
  if (state.audioContext) { state.audioContext.close(); state.audioContext = null; state.analyser = null; }
  state.session = null;
  state.last = null;
  state.lastFrame = -1;
  $("audio").srcObject = null;
  setLive(false);
  setStatus("idle");
}

async function stop() {
  const session = state.session;
  if (session) {
    try {
      const data = await api("/v1/sessions/stop", { token: session.token, body: {} });
      log(`stopped (${data.end_reason})`);
    } catch (err) { log(err.message, "error"); }
  }
  teardown();
}


function init() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
  $("api-key").value = fromHash || sessionStorage.getItem("facecast-key") || "";
  $("api-key").addEventListener("change", () => sessionStorage.setItem("facecast-key", $("api-key").value.trim()));
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("speak-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    send({ type: "agent.speak_text", event_id: newEventId(), text });
    $("text").value = "";
  });
  $("interrupt").addEventListener("click", () => send({ type: "agent.interrupt" }));
  window.addEventListener("beforeunload", () => {
    if (state.session) {
      fetch("/v1/sessions/stop", {
        method: "POST", keepalive: true,
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.session.token}` },
        body: "{}",
      });
    }
  });
  requestAnimationFrame(draw);
}

// For tests and the curious: the latest record and how open the drawn mouth is.
window.facecastFace = {
  get last() { return state.last; },
  get records() { return state.records; },
  get audioPeak() { return state.audioPeak; },  // the loudest speech heard so far (RMS, 0..1)
  mouthPixels,
};
init();
