// Recording player: fetches a session's asciicast v2 (docs/sessions.md, "Recording") and plays its output
// events into a read-only xterm.js terminal with their timing — play/pause, 1×/2×/4×, and idle gaps
// longer than 2 s shortened to 2 s. Input ("i") events are never replayed; "r" events resize the screen.

export const IDLE_LIMIT_SECONDS = 2;

// The header and the playable events of an asciicast v2 text. Lines that are not JSON (a chunk cut
// short by a crash) are skipped and counted; a missing or non-v2 header is an error.
export function parseAsciicast(text) {
  let header = null;
  const events = [];
  let skipped = 0;
  let last = 0;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    let value;
    try {
      value = JSON.parse(line);
    } catch {
      skipped += 1;
      continue;
    }
    if (header === null) {
      if (!value || Array.isArray(value) || typeof value !== "object" || value.version !== 2) {
        throw new Error("This is not an asciicast v2 recording.");
      }
      header = value;
      continue;
    }
    if (!Array.isArray(value) || value.length < 3 || typeof value[0] !== "number" || typeof value[1] !== "string") {
      skipped += 1;
      continue;
    }
    const [time, code, data] = value;
    if (code !== "o" && code !== "r") continue;
    last = Math.max(last, time); // times never go backwards during playback
    events.push({ time: last, code, data: String(data) });
  }
  if (header === null) throw new Error("The recording is empty.");
  return { header, events, skipped };
}

// When each event plays, in seconds from the start: the recorded times, with gaps longer than the idle
// limit shortened to it when `skipIdle`.
export function playbackTimes(events, skipIdle) {
  const times = [];
  let previous = 0;
  let at = 0;
  for (const event of events) {
    let gap = event.time - previous;
    if (skipIdle) gap = Math.min(gap, IDLE_LIMIT_SECONDS);
    at += gap;
    times.push(at);
    previous = event.time;
  }
  return times;
}

export function formatClock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const minutes = Math.floor(whole / 60);
  const rest = String(whole % 60).padStart(2, "0");
  return minutes >= 60 ? `${Math.floor(minutes / 60)}:${String(minutes % 60).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
}

function parseSize(text) {
  const match = /^(\d+)x(\d+)$/.exec(String(text).trim());
  return match ? { cols: Number(match[1]), rows: Number(match[2]) } : null;
}

const MAX_WAIT_MS = 250; // the clock display moves at least this often while playing

export class Player {
  constructor(term, recording, { onChange = () => {} } = {}) {
    this.term = term;
    this.header = recording.header;
    this.events = recording.events;
    this.onChange = onChange;
    this.speed = 1;
    this.skipIdle = true;
    this.times = playbackTimes(this.events, this.skipIdle);
    this.index = 0; // the next event to play
    this.clock = 0; // playback seconds elapsed
    this.state = "ready"; // ready | playing | paused | ended
    this.timer = null;
    this.lastTick = 0;
  }

  get duration() {
    return this.times.length ? this.times[this.times.length - 1] : 0;
  }

  play() {
    if (this.state === "playing") return;
    if (this.state === "ended") this.rewind();
    this.state = "playing";
    this.lastTick = performance.now();
    this.tick();
  }

  pause() {
    if (this.state !== "playing") return;
    this.advanceClock();
    clearTimeout(this.timer);
    this.state = "paused";
    this.onChange(this);
  }

  toggle() {
    if (this.state === "playing") this.pause();
    else this.play();
  }

  setSpeed(speed) {
    this.advanceClock();
    this.speed = speed;
    this.reschedule();
  }

  // Switching idle skipping keeps the position: the same next event, the same time since the last one.
  setSkipIdle(skipIdle) {
    this.advanceClock();
    const previous = this.index > 0 ? this.times[this.index - 1] : 0;
    const sinceLast = this.clock - previous;
    this.skipIdle = skipIdle;
    this.times = playbackTimes(this.events, skipIdle);
    const base = this.index > 0 ? this.times[this.index - 1] : 0;
    this.clock = base + (skipIdle ? Math.min(sinceLast, IDLE_LIMIT_SECONDS) : sinceLast);
    this.reschedule();
  }

  rewind() {
    clearTimeout(this.timer);
    this.term.reset();
    this.term.resize(this.header.width || 80, this.header.height || 24);
    this.index = 0;
    this.clock = 0;
    this.state = "ready";
    this.onChange(this);
  }

  advanceClock() {
    const now = performance.now();
    if (this.state === "playing") this.clock += ((now - this.lastTick) / 1000) * this.speed;
    this.lastTick = now;
  }

  reschedule() {
    if (this.state === "playing") {
      clearTimeout(this.timer);
      this.tick();
    } else {
      this.onChange(this);
    }
  }

  tick() {
    this.advanceClock();
    let output = "";
    while (this.index < this.events.length && this.times[this.index] <= this.clock) {
      const event = this.events[this.index];
      this.index += 1;
      if (event.code === "o") {
        output += event.data;
        continue;
      }
      const size = parseSize(event.data);
      if (size) {
        if (output) this.term.write(output);
        output = "";
        this.term.resize(size.cols, size.rows);
      }
    }
    if (output) this.term.write(output);
    if (this.index >= this.events.length) {
      this.clock = this.duration;
      this.state = "ended";
      this.onChange(this);
      return;
    }
    this.onChange(this);
    const wait = ((this.times[this.index] - this.clock) / this.speed) * 1000;
    this.timer = setTimeout(() => this.tick(), Math.max(0, Math.min(wait, MAX_WAIT_MS)));
  }
}

// ---------------------------------------------------------------- the session page's player

async function loadRecording(url) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/x-asciicast" } });
  } catch {
    throw new Error("The portal cannot be reached; reload to try again.");
  }
  if (response.status === 404) throw new Error("No recording is available for this session yet.");
  if (response.status === 403) throw new Error("Only the ticket's parties may replay this recording.");
  if (!response.ok) throw new Error(`The recording could not be loaded (${response.status}).`);
  return parseAsciicast(await response.text());
}

async function mountPlayer(root) {
  const status = document.getElementById("replay-status");
  const playButton = document.getElementById("replay-play");
  const speed = document.getElementById("replay-speed");
  const skipIdle = document.getElementById("replay-skip-idle");
  const clock = document.getElementById("replay-time");
  if (!window.Terminal) {
    root.dataset.state = "error";
    status.textContent = "terminal assets not installed — run scripts/setup";
    return;
  }
  let recording;
  try {
    recording = await loadRecording(root.dataset.recordingUrl);
  } catch (err) {
    root.dataset.state = "error";
    status.textContent = err.message;
    return;
  }
  const term = new window.Terminal({
    cols: recording.header.width || 80,
    rows: recording.header.height || 24,
    disableStdin: true,
    cursorBlink: false,
    scrollback: 10000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    theme: { background: "#0f1720", foreground: "#e6edf3" },
  });
  term.open(document.getElementById("replay-screen"));
  const labels = { ready: "Play", playing: "Pause", paused: "Resume", ended: "Replay" };
  const player = new Player(term, recording, {
    onChange: (p) => {
      root.dataset.state = p.state;
      playButton.textContent = labels[p.state];
      playButton.setAttribute("aria-pressed", String(p.state === "playing"));
      clock.textContent = `${formatClock(Math.min(p.clock, p.duration))} / ${formatClock(p.duration)}`;
      if (p.state === "ended") status.textContent = "End of the recording.";
      else if (p.state === "playing") status.textContent = "";
    },
  });
  player.setSpeed(Number(speed.value) || 1);
  player.setSkipIdle(skipIdle.checked);
  playButton.disabled = !recording.events.length;
  const notes = [];
  if (!recording.events.length) notes.push("The recording has no terminal output.");
  if (recording.skipped) notes.push(`${recording.skipped} damaged line(s) skipped.`);
  status.textContent = notes.join(" ") || "Ready.";
  root.dataset.state = "ready";

  playButton.addEventListener("click", () => player.toggle());
  speed.addEventListener("change", () => player.setSpeed(Number(speed.value) || 1));
  skipIdle.addEventListener("change", () => player.setSkipIdle(skipIdle.checked));
}

const root = document.getElementById("replay");
if (root) mountPlayer(root);
