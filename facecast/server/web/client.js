// Facecast browser test client: mint a token, start a session, receive the avatar over WebRTC, drive it
// over the LITE WebSocket (LITE) or talk with it through the microphone (FULL: the server holds the
// conversation; commands and events on the data channel), and show what happens. Plain ES module.

import { api, newEventId } from "./api.js";

const $ = (id) => document.getElementById(id);
const state = {
  apiKey: "", avatar: null, session: null, pc: null, ws: null, stats: null, keepAlive: null,
  full: false, channel: null, mic: null, talking: false,
  startedAt: 0, lastBytes: 0, lastFrames: 0, lastStatsAt: 0,
  // Speech latency: from when an utterance could first play (when it was sent, or when the utterance
  // ahead of it ended, if later) to its agent.speak_started. Events come over both the WebSocket and
  // the data channel; the first of each counts.
  speakSentAt: new Map(), speechEnded: new Set(), lastSpeechEndAt: 0,
};

function log(text, cls = "") {
  const li = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString([], { hour12: false });
  const body = document.createElement("span");
  body.textContent = text;
  if (cls) body.className = cls;
  li.append(time, body);
  $("log").prepend(li);
  while ($("log").children.length > 300) $("log").lastChild.remove();
}

function setStatus(text, cls = text) {
  $("status").textContent = text;
  $("status").className = `pill ${cls}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
  if (message) log(message, "error");
}


async function listAvatars(key) {
  // With a key, the list also holds that key's own avatars (photo avatars made on this server). A key the
  // server refuses still leaves the built-ins: the error says why the key's own are missing.
  if (!key) return (await api("/v1/avatars", { method: "GET" })).avatars;
  try {
    return (await api("/v1/avatars", { key, method: "GET" })).avatars;
  } catch (err) {
    showError(`${err.message} (showing the built-in avatars only)`);
    return (await api("/v1/avatars", { method: "GET" })).avatars;
  }
}

async function loadAvatars(select = null) {
  const key = $("api-key").value.trim();
  const avatars = await listAvatars(key);
  const box = $("avatars");
  box.replaceChildren();
  const ready = avatars.filter((avatar) => avatar.status === "ready");
  for (const avatar of ready) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "avatar";
    button.setAttribute("role", "radio");
    button.title = avatar.builtin ? `${avatar.name} — ${avatar.description}` : avatar.name;
    button.dataset.id = avatar.avatar_id;
    const img = document.createElement("img");
    img.alt = avatar.name;
    if (avatar.builtin) img.src = avatar.preview_url;
    else previewWithKey(img, avatar.preview_url, key);  // a real person's photo: the key is needed to see it
    button.append(img);
    button.addEventListener("click", () => selectAvatar(avatar.avatar_id));
    box.append(button);
  }
  const wanted = ready.find((avatar) => avatar.avatar_id === (select || state.avatar));
  if (wanted || ready.length) selectAvatar(wanted ? wanted.avatar_id : ready[0].avatar_id);
}

async function previewWithKey(img, url, key) {
  const res = await fetch(url, { headers: { "X-API-KEY": key } }).catch(() => null);
  if (res && res.ok) {
    img.src = URL.createObjectURL(await res.blob());
    return;
  }
  let message = res ? `${res.status} ${res.statusText}` : "the server is unreachable";
  try { message = (await res.json()).message || message; } catch { /* not JSON */ }
  log(`no preview for ${img.alt}: ${message}`, "error");
}

async function buildFromPhoto(file) {
  const key = $("api-key").value.trim();
  const status = $("build-status");
  if (!key) { showError("Enter an API key before uploading a photo."); return; }
  showError("");
  status.hidden = false;
  status.textContent = `uploading ${file.name}…`;
  const form = new FormData();
  form.append("image", file);
  form.append("name", file.name.replace(/\.[^.]*$/, "").slice(0, 200) || "my avatar");
  try {
    let avatar = await api("/v1/avatars", { key, form });
    while (avatar.status === "building") {
      status.textContent = `building: ${Math.round(100 * avatar.progress)}% ${avatar.stage || ""}`;
      await new Promise((resolve) => setTimeout(resolve, 500));
      avatar = await api(`/v1/avatars/${avatar.avatar_id}`, { key, method: "GET" });
    }
    if (avatar.status !== "ready") throw new Error(avatar.error || `build ${avatar.status}`);
    status.textContent = `${avatar.name} is ready`;
    log(`avatar ${avatar.avatar_id} built from ${file.name}`);
    await loadAvatars(avatar.avatar_id);
  } catch (err) {
    status.textContent = "";
    status.hidden = true;
    showError(`could not make an avatar from ${file.name}: ${err.message}`);
  } finally {
    $("photo").value = "";
  }
}

function selectAvatar(id) {
  state.avatar = id;
  for (const el of $("avatars").children) el.setAttribute("aria-checked", String(el.dataset.id === id));
}

function setLive(live) {
  $("start").disabled = live;
  $("stop").disabled = !live;
  for (const id of ["text", "speak", "interrupt", "listening", "ptt"]) $(id).disabled = !live;
}

// FULL mode: one agent-control command on the data channel.
function command(eventType, payload) {
  if (!state.channel || state.channel.readyState !== "open") { showError("not connected"); return; }
  state.channel.send(JSON.stringify(payload ? { event_type: eventType, payload } : { event_type: eventType }));
  log(`dc → ${eventType}${payload?.text ? `: ${payload.text}` : ""}`, "out");
}

function transcript(who, text) {
  const li = document.createElement("li");
  li.className = who;
  li.textContent = `${who}: ${text}`;
  $("transcript").append(li);
}

// FULL mode: one agent-response event.
function onAgentEvent(event) {
  const payload = event.payload || {};
  const extra = payload.text ? `: ${payload.text}` : payload.reason ? `: ${payload.reason}` : "";
  log(`dc ← ${event.event_type}${extra}`, event.event_type.endsWith("_failed") ? "error" : "");
  if (event.event_type === "user.transcription") transcript("you", payload.text);
  else if (event.event_type === "avatar.transcription") transcript("avatar", payload.text);
  else if (event.event_type === "avatar.speak_started") setStatus("speaking");
  else if (event.event_type === "avatar.speak_ended" && state.session) setStatus("connected");
  else if (event.event_type === "user.speak_started") setStatus("listening");
  else if (event.event_type === "user.speak_ended" && state.session) setStatus("connected");
}

function waitForIceGathering(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs); // send what we have: host candidates suffice on one machine
  });
}

function onEvent(event, via) {
  const extra = event.state ? ` ${event.state}` : event.message ? `: ${event.message}` : "";
  const id = event.event_id && event.type.startsWith("agent.") ? ` [${event.event_id.slice(0, 8)}]` : "";
  log(`${via} ← ${event.type}${extra}${id}`, event.type === "error" ? "error" : "");
  if (event.type === "session.state_updated") {
    setStatus(event.state);
    if (event.state === "connected" && $("greet").checked && !state.full && state.session && !state.session.greeted) {
      state.session.greeted = true;
      const name = $("avatars").querySelector("[aria-checked=true] img")?.alt || "your avatar";
      sayText(`Hello! I am ${name}. I am running on your own computer. Type something and I will say it.`);
    }
  } else if (event.type === "agent.speak_started") {
    setStatus("speaking");
    const sent = state.speakSentAt.get(event.event_id);
    if (sent !== undefined) {
      state.speakSentAt.delete(event.event_id);
      const ready = Math.max(sent, state.lastSpeechEndAt);
      $("stat-latency").textContent = `${Math.round(performance.now() - ready)} ms`;
    }
  } else if (event.type === "agent.speak_ended" || event.type === "agent.speak_interrupted") {
    state.speakSentAt.delete(event.event_id);
    if (!state.speechEnded.has(event.event_id)) {
      state.speechEnded.add(event.event_id);
      state.lastSpeechEndAt = performance.now();
    }
    if (state.session) setStatus("connected");
  } else if (event.type === "session.stopped") {
    teardown(`session stopped: ${event.end_reason}`);
  }
}

function send(message) {
  if (state.full) {  // FULL sessions take the LITE names for these over the data channel
    const names = { "agent.interrupt": "avatar.interrupt", "agent.start_listening": "avatar.start_listening",
      "agent.stop_listening": "avatar.stop_listening" };
    if (names[message.type]) command(names[message.type]);
    else if (message.type === "agent.speak_text") command("avatar.speak_text", { text: message.text });
    return;
  }
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    showError("not connected");
    return;
  }
  state.ws.send(JSON.stringify(message));
  log(`ws → ${message.type}${message.text ? `: ${message.text}` : ""}`, "out");
}

async function start() {
  showError("");
  state.apiKey = $("api-key").value.trim();
  if (!state.apiKey) { showError("Enter an API key (facecast demo prints one)."); return; }
  setLive(true);
  setStatus("connecting");
  state.startedAt = performance.now();
  $("stat-first-frame").textContent = "–";
  try {
    state.full = $("mode").value === "FULL";
    $("ptt").hidden = !(state.full && $("interactivity").value === "PUSH_TO_TALK");
    const body = {
      mode: state.full ? "FULL" : "LITE",
      avatar_id: state.avatar,
      is_sandbox: $("sandbox").checked,
      aspect_ratio: $("aspect").value,
      fps: Number($("fps").value),
      video_settings: { quality: $("quality").value, encoding: $("encoding").value },
      transport: "webrtc",
    };
    if (state.full) {
      body.interactivity_type = $("interactivity").value;
      const llm = $("llm-config").value.trim();
      if (llm) body.llm_configuration_id = llm;
      // Asked before the token is minted: a refused microphone starts no session.
      state.mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true } });
    }
    const minted = await api("/v1/sessions/token", { key: state.apiKey, body });
    log(`session ${minted.session_id}`);
    const started = await api("/v1/sessions/start", { token: minted.session_token, body: { session_id: minted.session_id } });
    state.session = { ...started, token: minted.session_token };
    if (!state.full) openSocket(started.ws_url);
    await connectPeer(started);
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
  ws.addEventListener("close", () => { if (state.ws === ws) log("websocket closed"); });
  state.keepAlive = setInterval(() => {
    if (document.visibilityState === "visible" && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "session.keep_alive" }));
    }
  }, 30000);
}

async function connectPeer(started) {
  const pc = new RTCPeerConnection({ iceServers: started.webrtc.ice_servers });
  state.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  if (state.mic) pc.addTrack(state.mic.getAudioTracks()[0], state.mic);  // FULL: the avatar hears you
  else pc.addTransceiver("audio", { direction: "recvonly" });
  const channel = pc.createDataChannel(started.webrtc.data_channel.label, {
    negotiated: true, id: started.webrtc.data_channel.id,
  });
  state.channel = channel;
  channel.addEventListener("message", (msg) => {
    try {
      const event = JSON.parse(msg.data);
      if (event.event_type) onAgentEvent(event);
      // LITE sessions hear the state on the WebSocket too; FULL ones only here.
      else if (event.type !== "session.state_updated" || state.full) onEvent(event, "dc");
    } catch (err) { log(`bad data channel event: ${err}`, "error"); }
  });
  if (state.full) {
    state.keepAlive = setInterval(() => {
      if (channel.readyState === "open") channel.send(JSON.stringify({ type: "session.keep_alive" }));
    }, 30000);
  }
  const video = $("video");
  const stream = new MediaStream();
  video.srcObject = stream; // once: re-assigning it per track restarts the element's load
  pc.addEventListener("track", (ev) => {
    stream.addTrack(ev.track);
    if (ev.track.kind === "video") video.play().catch((err) => log(`autoplay blocked: ${err.message}`, "error"));
  });
  pc.addEventListener("connectionstatechange", () => {
    log(`webrtc ${pc.connectionState}`);
    if (pc.connectionState === "failed") showError("WebRTC connection failed (firewall? see docs/server.md on TURN)");
  });
  const markFirstFrame = () => {
    const ms = Math.round(performance.now() - state.startedAt);
    $("stat-first-frame").textContent = `${ms} ms`;
    $("placeholder").hidden = true;
    log(`first video frame after ${ms} ms`);
  };
  if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(markFirstFrame);
  else video.addEventListener("playing", markFirstFrame, { once: true });

  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  log(`offer ready after ${Math.round(performance.now() - state.startedAt)} ms`);
  const answer = await api(started.webrtc.offer_url, {
    token: state.session.token, body: { sdp: pc.localDescription.sdp, type: "offer" },
  });
  await pc.setRemoteDescription(answer);
  log(`answer applied after ${Math.round(performance.now() - state.startedAt)} ms`);
  state.stats = setInterval(updateStats, 1000);
}

async function updateStats() {
  if (!state.pc) return;
  const report = await state.pc.getStats();
  const now = performance.now();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      const seconds = (now - state.lastStatsAt) / 1000;
      if (state.lastStatsAt && seconds > 0) {
        $("stat-fps").textContent = ((s.framesDecoded - state.lastFrames) / seconds).toFixed(1);
        $("stat-bitrate").textContent = `${Math.round(((s.bytesReceived - state.lastBytes) * 8) / seconds / 1000)} kbit/s`;
      }
      state.lastFrames = s.framesDecoded;
      state.lastBytes = s.bytesReceived;
      if (s.frameWidth) $("stat-size").textContent = `${s.frameWidth}×${s.frameHeight}`;
      $("stat-dropped").textContent = String(s.framesDropped ?? 0);
    }
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
      $("stat-rtt").textContent = `${(s.currentRoundTripTime * 1000).toFixed(1)} ms`;
    }
  });
  state.lastStatsAt = now;
}

function teardown(reason) {
  if (reason) log(reason);
  clearInterval(state.stats);
  clearInterval(state.keepAlive);
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  if (state.pc) { state.pc.close(); state.pc = null; }
  if (state.mic) { for (const track of state.mic.getTracks()) track.stop(); state.mic = null; }
  state.channel = null;
  state.session = null;
  state.lastStatsAt = 0;
  state.speakSentAt.clear();
  state.speechEnded.clear();
  state.lastSpeechEndAt = 0;
  $("video").srcObject = null;
  $("placeholder").hidden = false;
  setLive(false);
  setStatus("idle");
}

async function stop() {
  const session = state.session;
  if (session) {
    try {
      const data = await api("/v1/sessions/stop", { token: session.token, body: { session_id: session.session_id } });
      log(`stopped (${data.end_reason})`);
    } catch (err) { log(err.message, "error"); }
  }
  teardown();
}


function sayText(text) {
  const eventId = newEventId();
  state.speakSentAt.set(eventId, performance.now());
  send({ type: "agent.speak_text", event_id: eventId, text });
}

function speak(ev) {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  sayText(text);
  $("text").value = "";
}

function init() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromHash = hash.get("key");
  // `facecast demo` links FULL mode (#key=...&mode=FULL[&llm=llm_...]) when a language model is configured.
  if (hash.get("mode") === "FULL") $("mode").value = "FULL";
  if (hash.get("llm")) $("llm-config").value = hash.get("llm");
  const saved = sessionStorage.getItem("facecast-key");
  $("api-key").value = fromHash || saved || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("facecast-key", $("api-key").value.trim());
    loadAvatars().catch((err) => showError(`could not list avatars: ${err.message}`));
  });
  $("photo").addEventListener("change", (ev) => { if (ev.target.files[0]) buildFromPhoto(ev.target.files[0]); });
  if (fromHash) sessionStorage.setItem("facecast-key", fromHash);
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("speak-form").addEventListener("submit", speak);
  $("interrupt").addEventListener("click", () => send({ type: "agent.interrupt" }));
  $("ptt").addEventListener("pointerdown", () => { state.talking = true; command("user.start_push_to_talk"); });
  for (const up of ["pointerup", "pointerleave"]) {
    $("ptt").addEventListener(up, () => {
      if (state.talking) { state.talking = false; command("user.stop_push_to_talk"); }
    });
  }
  $("listening").addEventListener("change", (ev) =>
    send({ type: ev.target.checked ? "agent.start_listening" : "agent.stop_listening" }));
  window.addEventListener("beforeunload", () => {
    if (state.session) {
      // keepalive lets the stop request outlive the page, so a closed tab never leaves a session running.
      fetch("/v1/sessions/stop", {
        method: "POST", keepalive: true,
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.session.token}` },
        body: JSON.stringify({ session_id: state.session.session_id }),
      });
    }
  });
  loadAvatars().catch((err) => showError(`could not list avatars: ${err.message}`));
}

init();
