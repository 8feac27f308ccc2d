// The session page: follows the session while it starts or ends (the operation's progress, polling the
// session), End session (confirmation dialog), and for the session's own engineer the browser terminal:
// POST /sessions/{id}/attach → a one-use WebSocket URL on the gateway (frames: docs/sessions.md,
// "Attaching a terminal"). xterm.js and its fit addon are classic scripts from static/vendor/.

import { api, debounce, showAlert } from "./api.js";
import { progressPanel, watchOperation } from "./operations.js";

const page = document.getElementById("session-page");
const sessionId = page.dataset.sessionId;
const pageError = document.getElementById("page-error");

// ---------------------------------------------------------------- following the session

const POLL_MS = { requested: 1000, starting: 1000, ending: 1000, active: 5000 };
const RECORDING_CHECKS = 15; // an ended session's recording may land a moment after the end
let pollTimer = null;
let recordingChecks = 0;

function reload() {
  window.location.replace(window.location.pathname + window.location.hash);
}

async function pollSession() {
  clearTimeout(pollTimer);
  let current;
  try {
    current = await api("GET", `/sessions/${sessionId}`);
  } catch (err) {
    if (err.status === 404 || err.status === 403) return; // gone or no longer visible: nothing to follow
    pollTimer = setTimeout(pollSession, 5000);
    return;
  }
  const hadRecording = page.dataset.hasRecording === "true";
  if (current.state !== page.dataset.state || (!hadRecording && current.recording_url)) {
    reload();
    return;
  }
  if (POLL_MS[current.state]) {
    pollTimer = setTimeout(pollSession, POLL_MS[current.state]);
  } else if (current.state === "ended" && !hadRecording && recordingChecks++ < RECORDING_CHECKS) {
    pollTimer = setTimeout(pollSession, 2000);
  }
}

const progressElement = document.getElementById("session-progress");
if (progressElement && !progressElement.hidden) {
  const panel = progressPanel(progressElement);
  const fill = progressElement.querySelector(".progress-fill");
  fill.style.width = `${fill.dataset.progress || 0}%`;
  const operationId = progressElement.dataset.operationId || new URLSearchParams(window.location.search).get("operation");
  if (operationId) {
    watchOperation(operationId, {
      onProgress: (event) => panel.progress(event),
      onEnd: (end) => {
        panel.end(end);
        pollSession(); // the session's state settles what the page shows next
      },
    });
  }
}
if (page.dataset.watch === "true" || (page.dataset.state === "ended" && page.dataset.hasRecording !== "true")) {
  pollTimer = setTimeout(pollSession, POLL_MS[page.dataset.state] || 2000);
}

// "Expires in 42 min" next to the expiry time.
const expires = document.getElementById("session-expires");
const expiresIn = document.getElementById("session-expires-in");
if (expires && expiresIn) {
  const at = Date.parse(expires.getAttribute("datetime"));
  const tick = () => {
    const minutes = Math.round((at - Date.now()) / 60000);
    expiresIn.textContent = minutes > 0 ? `(in ${minutes} min)` : "(due now)";
  };
  tick();
  setInterval(tick, 30000);
}

// ---------------------------------------------------------------- End session

const dialog = document.getElementById("end-dialog");
if (dialog) {
  const opener = document.getElementById("end-session");
  const confirmButton = document.getElementById("end-confirm");
  const endError = document.getElementById("end-error");
  opener.addEventListener("click", () => {
    showAlert(endError, "");
    confirmButton.disabled = false;
    dialog.showModal();
    document.getElementById("end-cancel").focus(); // the safe choice has the focus
  });
  document.getElementById("end-cancel").addEventListener("click", () => {
    dialog.close();
    opener.focus();
  });
  dialog.addEventListener("cancel", () => opener.focus());
  document.getElementById("end-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    confirmButton.disabled = true;
    try {
      await api("DELETE", `/sessions/${sessionId}`);
    } catch (err) {
      confirmButton.disabled = false;
      if (err.status !== 409) {
        showAlert(endError, err.message);
        return;
      }
      // 409: it is already ending or ended; the page shows which.
    }
    dialog.close();
    opener.disabled = true;
    reload(); // the page then follows the end operation
  });
}

// ---------------------------------------------------------------- the terminal

const CLOSE_REASONS = {
  1001: "the gateway is restarting",
  1006: "the connection was lost",
  4001: "the attach ticket expired or was already used",
  4003: "the session is not active or not yours",
  4504: "the node's agent did not open the terminal",
};

function startTerminal(container) {
  const status = document.getElementById("terminal-status");
  const reconnectButton = document.getElementById("terminal-reconnect");
  const term = new window.Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
    theme: { background: "#0f1720", foreground: "#e6edf3" },
  });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();

  const encoder = new TextEncoder();
  let socket = null;
  let ended = false; // the session ended: no reconnecting

  const setState = (state, text) => {
    container.dataset.state = state;
    status.textContent = text;
    reconnectButton.hidden = state !== "disconnected";
  };
  const send = (data) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  };

  term.onData((data) => {
    if (container.dataset.state === "exited") setState("ready", "Connected — new shell");
    send(encoder.encode(data));
  });
  term.onBinary((data) => send(Uint8Array.from(data, (ch) => ch.charCodeAt(0) & 0xff)));
  term.onResize(({ cols, rows }) => send(JSON.stringify({ type: "resize", cols, rows })));
  window.addEventListener("resize", debounce(() => fit.fit(), 150));

  const onFrame = (text) => {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return; // not ours to interpret
    }
    switch (frame.type) {
      case "ready":
        setState("ready", "Connected");
        fit.fit();
        term.focus();
        break;
      case "exit":
        setState("exited", "shell exited — press a key to start a new shell");
        term.write("\r\n\x1b[2m[shell exited — press a key to start a new shell]\x1b[0m\r\n");
        break;
      case "closed":
        ended = true;
        term.options.disableStdin = true;
        setState("closed", `The session ended${frame.reason ? ` (${String(frame.reason).replace(/_/g, " ")})` : ""}.`);
        setTimeout(pollSession, 1000);
        break;
      case "error":
        status.textContent = frame.message || "The gateway reported an error.";
        break;
      default:
        break;
    }
  };

  async function connect() {
    if (ended) return;
    setState("connecting", "Connecting…");
    let answer;
    try {
      fit.fit();
      answer = await api("POST", `/sessions/${sessionId}/attach`, { cols: term.cols, rows: term.rows });
    } catch (err) {
      if (err.status === 409) {
        ended = true;
        setState("closed", err.message || "The session is not active.");
        pollSession();
      } else {
        setState("disconnected", `Could not attach: ${err.message}`);
      }
      return;
    }
    let ws;
    try {
      ws = new WebSocket(answer.url);
    } catch {
      setState("disconnected", "The terminal address is not valid.");
      return;
    }
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.onmessage = (event) => {
      if (typeof event.data === "string") onFrame(event.data);
      else term.write(new Uint8Array(event.data));
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      if (ended) return;
      const why = event.reason || CLOSE_REASONS[event.code] || `connection closed (${event.code})`;
      if (event.code === 4003) {
        ended = true;
        setState("closed", `Disconnected: ${why}.`);
        pollSession();
        return;
      }
      setState("disconnected", `Disconnected: ${why}.`);
      reconnectButton.focus();
    };
  }

  reconnectButton.addEventListener("click", connect);
  window.addEventListener("pagehide", () => socket && socket.close(1000, "page closed"));
  connect();
}

const container = document.getElementById("terminal");
if (container) {
  if (window.Terminal && window.FitAddon) {
    startTerminal(container);
  } else {
    container.dataset.state = "unavailable";
    document.getElementById("terminal-status").textContent = "";
    showAlert(pageError, "terminal assets not installed — run scripts/setup");
  }
}
