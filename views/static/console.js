// The console page: one session's events over WebSocket or SSE, each seq shown once, gaps marked.
"use strict";

// SSE names each event by its type; EventSource delivers only the names it listens for
const EVENT_TYPES = ["user.message", "assistant.delta", "assistant.final", "tool.request", "tool.result", "system.notice"];
const SESSION_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const WS_RETRY_MS = 2000;
const NAMES = { ws: "WebSocket", sse: "SSE" };

const $ = (id) => document.getElementById(id);
const ui = {
  authForm: $("auth-form"),
  token: $("token"),
  devToken: $("dev-token"),
  sessionForm: $("session-form"),
  sessionId: $("session-id"),
  newSession: $("new-session"),
  disconnect: $("disconnect"),
  reconnect: $("reconnect"),
  status: $("status"),
  events: $("events"),
  sendForm: $("send-form"),
  message: $("message"),
  send: $("send"),
  stop: $("stop"),
  record: $("record"),
  notice: $("notice"),
};

const state = {
  session: null,
  transport: "ws",
  conn: null, // the current WebSocket or EventSource; handlers of an older one see they are stale
  phase: "idle",
  lastSeq: 0,
  seen: new Set(),
  duplicates: 0,
  recovered: null, // the last recovered frame of the current connection
  retry: null,
  refs: 0,
  token: sessionStorage.getItem("soma.token") || "", // a bearer token, when the service requires one
  attempt: 0, // connect() calls; an older one's ticket arrives too late to be used
  replies: false, // the service answers messages (its /health lists the model server)
  recorder: null, // a voice message being recorded (its /health lists the speech server)
};

// crypto.randomUUID exists only in secure contexts; a page opened over plain http from another host is not one
function uuid4() {
  if (window.isSecureContext && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // event data is never parsed as HTML
  return node;
}

function notice(text, isError = false) {
  ui.notice.textContent = text;
  ui.notice.classList.toggle("error", isError);
}

function renderStatus() {
  if (!state.session) {
    ui.status.textContent = "No session open.";
    ui.status.classList.remove("warn");
    return;
  }
  const r = state.recovered;
  const recovery = r
    ? `recovered: ${r.recovered ? "yes" : "no"}, replayed ${r.replayed} (after ${r.after}, head ${r.head_seq})`
    : "recovery pending";
  const parts = [NAMES[state.transport], state.phase, recovery, `last seq ${state.lastSeq}`];
  const live = (state.phase === "connected" || state.phase === "open") && (!r || r.recovered);
  ui.status.classList.toggle("warn", !live);
  if (state.duplicates) parts.push(`${state.duplicates} duplicates dropped`);
  ui.status.textContent = parts.join(" · ");
}

function setPhase(phase) {
  state.phase = phase;
  renderStatus();
}

function append(node) {
  const box = ui.events;
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 40;
  box.append(node);
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function markGap(from, to) {
  const range = from === to ? `seq ${from}` : `seq ${from}–${to}`;
  const li = el("li", "gap", `${range} missing`);
  li.dataset.gap = `${from}-${to}`;
  append(li);
}

// replies: one row per stream (its deltas appended as they come, then the final's text), "thinking" before
function replyRow(streamId, replyTo) {
  let li = ui.events.querySelector(`li.reply[data-stream="${CSS.escape(streamId)}"]`);
  if (!li) {
    ui.events.querySelector(`li.thinking[data-reply-to="${CSS.escape(replyTo ?? "")}"]`)?.remove();
    li = el("li", "reply streaming");
    li.dataset.stream = streamId;
    li.append(el("span", "seq", ""), el("span", "type", "assistant"), el("span", "role", "assistant"),
      el("span", "text", ""));
    append(li);
  }
  return li;
}

function showReply(event) {
  const meta = event.metadata ?? {};
  const li = replyRow(event.stream_id, meta.reply_to);
  li.dataset.seq = String(event.seq); // the last seq of the reply shown in it
  li.querySelector(".seq").textContent = String(event.seq);
  const text = li.querySelector(".text");
  if (event.type === "assistant.delta") {
    text.textContent += event.message;
  } else {
    text.textContent = event.message; // the final: the whole reply, exactly the deltas joined
    li.classList.replace("streaming", "final");
    li.dataset.status = meta.status ?? "complete";
    if (meta.status && meta.status !== "complete") li.querySelector(".type").textContent = `assistant (${meta.status})`;
  }
  updateStop();
}

function updateStop() {
  ui.stop.hidden = !ui.events.querySelector("li.reply.streaming, li.thinking");
}

function addEvent(event) {
  const seq = event.seq;
  if (state.seen.has(seq)) {
    state.duplicates += 1;
    renderStatus();
    return;
  }
  // a reply's deltas folded into this frame (the history the server replays): their seqs are not missing
  const folded = Array.isArray(event.folded) ? event.folded : null;
  const from = folded ? folded[0] : seq;
  if (from > state.lastSeq + 1) markGap(state.lastSeq + 1, from - 1);
  if (folded) for (let s = folded[0]; s <= folded[1]; s += 1) state.seen.add(s);
  state.seen.add(seq);
  state.lastSeq = Math.max(state.lastSeq, seq);
  if ((event.type === "assistant.delta" || event.type === "assistant.final") && event.stream_id) {
    showReply(event);
    renderStatus();
    return;
  }
  if (event.type === "system.notice" && event.metadata?.notice === "reply_restarted") {
    // a worker died mid-reply: that stream's text is abandoned, the reply starts again under a new stream
    const old = ui.events.querySelector(`li.reply[data-stream="${CSS.escape(event.metadata.stream_id)}"]`);
    if (old) old.classList.replace("streaming", "abandoned");
  }
  const li = el("li");
  li.dataset.seq = String(seq);
  if (event.occurred_at) li.title = event.occurred_at;
  li.append(el("span", "seq", String(seq)), el("span", "type", event.type ?? ""),
    el("span", "role", event.role ?? ""), el("span", "text", event.message ?? ""));
  append(li);
  if (event.type === "user.message" && state.replies && state.recovered) {
    // live (not history) and answered by the responder: "thinking" until its first delta (it may wait in the
    // queue meanwhile)
    const wait = el("li", "thinking", "thinking…");
    wait.dataset.replyTo = event.event_id;
    append(wait);
  }
  updateStop();
  renderStatus();
}

async function stopReply() {
  const ws = state.conn;
  if (state.transport === "ws" && ws instanceof WebSocket && ws.readyState === WebSocket.OPEN) {
    state.refs += 1;
    ws.send(JSON.stringify({ action: "stop", ref: `s${state.refs}` }));
    notice("Stopping the reply…");
    return;
  }
  try {
    const resp = await fetch(`/v1/session/${encodeURIComponent(state.session)}/stop`, {
      method: "POST",
      headers: authHeaders(),
    });
    const body = await resp.json();
    if (resp.ok) notice("Stopping the reply…");
    else notice(`${body.error?.code ?? resp.status}: ${body.error?.message ?? resp.statusText}`, true);
  } catch (err) {
    notice(`Not stopped: ${err.message}`, true);
  }
}

function onFrame(frame) {
  if (typeof frame.seq === "number") {
    addEvent(frame);
  } else if (frame.type === "recovered") {
    state.recovered = frame;
    if (!frame.recovered && frame.head_seq > state.lastSeq) {
      // too far behind: the server goes live from its head, so what lies between is not coming
      markGap(state.lastSeq + 1, frame.head_seq);
      state.lastSeq = frame.head_seq;
    }
    renderStatus();
  } else if (frame.type === "ack") {
    if (frame.stop_requested_at) notice("Stopping the reply…");
    else notice(`Sent over the socket as event ${frame.event_id}.`);
  } else if (frame.type === "error") {
    notice(`${frame.code}: ${frame.message}`, true);
  }
}

function drop() {
  clearTimeout(state.retry);
  state.attempt += 1; // a ticket still on its way is not used
  const conn = state.conn;
  state.conn = null;
  if (conn) conn.close();
}

function streamPath(kind, ticket) {
  const path = `/v1/session/${encodeURIComponent(state.session)}/${kind}?after=${state.lastSeq}`;
  return ticket ? `${path}&ticket=${encodeURIComponent(ticket)}` : path;
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

function setToken(token) {
  state.token = token;
  ui.token.value = token;
  if (token) sessionStorage.setItem("soma.token", token);
  else sessionStorage.removeItem("soma.token");
}

// a browser cannot send a header with a WebSocket or an EventSource: it opens them with a single-use ticket
async function ticket() {
  const resp = await fetch("/v1/stream-tickets", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ session_id: state.session }),
  });
  const body = await resp.json();
  if (!resp.ok) throw new Error(`${body.error?.code ?? resp.status}: ${body.error?.message ?? resp.statusText}`);
  return body.ticket;
}

function connectWs(ticketValue) {
  const url = new URL(streamPath("stream", ticketValue), location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  let opened = false;
  state.conn = ws;
  ws.onopen = () => {
    opened = true;
    if (state.conn === ws) setPhase("connected");
  };
  ws.onmessage = (m) => state.conn === ws && onFrame(JSON.parse(m.data));
  ws.onclose = (e) => {
    if (state.conn !== ws) return;
    // the server closes a slow reader (1013) or on shutdown (1001): resume from the last seq seen
    state.conn = null;
    setPhase(`closed (${e.code}${e.reason ? `: ${e.reason}` : ""}), retrying`);
    if (!opened) explain();
    state.retry = setTimeout(connect, WS_RETRY_MS);
  };
}

// a browser is not told why a stream was refused; the same request over HTTP says it
async function explain() {
  try {
    const resp = await fetch(`/v1/session/${encodeURIComponent(state.session)}`, { headers: authHeaders() });
    if (resp.status === 401 || resp.status === 403) {
      const body = await resp.json();
      const hint = resp.status === 401 ? " Paste a token above, or Get a dev token." : "";
      notice(`${body.error?.code}: ${body.error?.message}.${hint}`, true);
    }
  } catch (err) {
    notice(`The service does not answer: ${err.message}`, true);
  }
}

function connectSse(ticketValue) {
  // a new EventSource cannot set Last-Event-ID; ?after= does, and the browser's own retries send the header
  const es = new EventSource(streamPath("events", ticketValue));
  state.conn = es;
  const handle = (m) => state.conn === es && onFrame(JSON.parse(m.data));
  for (const type of [...EVENT_TYPES, "recovered"]) es.addEventListener(type, handle);
  es.addEventListener("end", (m) => {
    if (state.conn !== es) return;
    // the server ended the stream (its token expired): the browser would only retry with a spent ticket
    drop();
    setPhase(`ended (${JSON.parse(m.data).reason})`);
  });
  es.onopen = () => state.conn === es && setPhase("open");
  es.onerror = () => {
    if (state.conn !== es) return;
    if (es.readyState === EventSource.CONNECTING && !ticketValue) {
      setPhase("reconnecting");
    } else {
      // refused, or retrying with a ticket already spent: a new ticket, from the last seq seen
      es.close();
      state.conn = null;
      explain();
      setPhase("closed, retrying");
      state.retry = setTimeout(connect, WS_RETRY_MS);
    }
  };
}

async function connect() {
  drop();
  if (!state.session) return;
  state.recovered = null;
  state.phase = "connecting";
  renderStatus();
  const attempt = ++state.attempt;
  let ticketValue = null;
  if (state.token) {
    try {
      ticketValue = await ticket();
    } catch (err) {
      if (attempt !== state.attempt) return;
      setPhase("not connected");
      notice(`No stream ticket: ${err.message}`, true);
      return;
    }
    if (attempt !== state.attempt) return; // another connect() (or a disconnect) came meanwhile
  }
  (state.transport === "ws" ? connectWs : connectSse)(ticketValue);
  renderStatus();
}

// the address keeps the session and transport, so a reload reopens them
function remember() {
  history.replaceState(null, "", `#${new URLSearchParams({ session: state.session, transport: state.transport })}`);
}

function openSession(id) {
  if (!SESSION_ID.test(id)) {
    notice("A session id is 1–128 letters, digits or . _ : - and starts with a letter or digit.", true);
    ui.sessionId.focus();
    return;
  }
  drop();
  state.session = id;
  state.lastSeq = 0;
  state.seen.clear();
  state.duplicates = 0;
  ui.events.replaceChildren();
  ui.sessionId.value = id;
  for (const control of [ui.disconnect, ui.reconnect, ui.message, ui.send, ui.record]) control.disabled = false;
  remember();
  notice("");
  connect();
  ui.message.focus();
}

async function post(text) {
  try {
    const resp = await fetch("/v1/session/message", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ session_id: state.session, message: text }),
    });
    const body = await resp.json();
    if (resp.ok) notice(`Sent over HTTP as event ${body.event_id}.`);
    else notice(`${body.error?.code ?? resp.status}: ${body.error?.message ?? resp.statusText}`, true);
  } catch (err) {
    notice(`Not sent: ${err.message}`, true);
  }
}

// voice messages: recorded with the microphone, posted as audio; the service transcribes and posts the text
async function toggleRecording() {
  if (state.recorder) {
    state.recorder.stop(); // its "stop" handler sends what was recorded
    return;
  }
  let stream;
  try {
    // the speech server wants the voice as spoken: no noise suppression or gain control of the browser's
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    notice(`No microphone: ${err.message}`, true);
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  const began = Date.now();
  const clock = setInterval(() => {
    notice(`Recording… ${((Date.now() - began) / 1000).toFixed(1)} s (press Stop and send)`);
  }, 250);
  recorder.addEventListener("dataavailable", (e) => { if (e.data.size) chunks.push(e.data); });
  recorder.addEventListener("stop", () => {
    clearInterval(clock);
    for (const track of stream.getTracks()) track.stop();
    state.recorder = null;
    ui.record.textContent = "Record voice";
    ui.record.setAttribute("aria-pressed", "false");
    sendVoice(new Blob(chunks, { type: recorder.mimeType || "audio/webm" }));
  });
  recorder.start();
  state.recorder = recorder;
  ui.record.textContent = "Stop and send";
  ui.record.setAttribute("aria-pressed", "true");
  notice("Recording…");
}

async function sendVoice(audio) {
  if (!state.session) return;
  notice("Transcribing…");
  try {
    const resp = await fetch(`/v1/session/${encodeURIComponent(state.session)}/voice`, {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": audio.type || "audio/webm" },
      body: audio,
    });
    const body = await resp.json();
    if (resp.ok) notice(`Heard: “${body.transcript}”`);
    else notice(`${body.error?.code ?? resp.status}: ${body.error?.message ?? resp.statusText}`, true);
  } catch (err) {
    notice(`Voice message not sent: ${err.message}`, true);
  }
}

function send(text) {
  const ws = state.conn;
  if (state.transport === "ws" && ws instanceof WebSocket && ws.readyState === WebSocket.OPEN) {
    state.refs += 1;
    ws.send(JSON.stringify({ message: text, ref: `m${state.refs}` }));
    notice("Sending over the socket…");
  } else {
    // SSE is one-way, and a message typed while the socket is down still gets through
    notice("Sending over HTTP…");
    post(text);
  }
}

ui.authForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(ui.token.value.trim());
  notice(state.token ? "Token set for this tab." : "Token cleared.");
  if (state.session) connect();
});
ui.devToken.addEventListener("click", async () => {
  try {
    const resp = await fetch("/dev/token", { method: "POST" });
    const body = await resp.json();
    if (!resp.ok) {
      notice(`No dev token: ${body.error?.message ?? resp.statusText}`, true);
      return;
    }
    setToken(body.token);
    notice(`Dev token for tenant ${body.claims.tenant ?? body.claims.org ?? "?"}, valid ${body.expires_in} s.`);
    if (state.session) connect();
  } catch (err) {
    notice(`No dev token: ${err.message}`, true);
  }
});
ui.token.value = state.token;
ui.stop.addEventListener("click", stopReply);
fetch("/health")
  .then((resp) => resp.json())
  .then((body) => {
    state.replies = Boolean(body.components?.slm);
    // voice messages need the speech server and a microphone (a secure context: https, or this machine)
    ui.record.hidden = !(body.components?.stt && navigator.mediaDevices && window.MediaRecorder);
  })
  .catch(() => {});
ui.record.addEventListener("click", toggleRecording);

ui.sessionForm.addEventListener("submit", (e) => {
  e.preventDefault();
  openSession(ui.sessionId.value.trim());
});
ui.newSession.addEventListener("click", () => openSession(uuid4()));
ui.disconnect.addEventListener("click", () => {
  drop();
  setPhase("disconnected");
});
ui.reconnect.addEventListener("click", connect);
for (const radio of document.querySelectorAll('input[name="transport"]')) {
  radio.addEventListener("change", () => {
    state.transport = radio.value;
    if (state.session) {
      remember();
      connect(); // continues after the last seq seen: the other transport shows no event twice
    }
  });
}
ui.sendForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.message.value.trim();
  if (!text || !state.session) return;
  ui.message.value = "";
  send(text);
});

const initial = new URLSearchParams(location.hash.slice(1));
if (initial.get("transport") === "sse") {
  state.transport = "sse";
  document.querySelector('input[name="transport"][value="sse"]').checked = true;
}
if (initial.get("session")) openSession(initial.get("session"));
