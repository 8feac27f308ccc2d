// Follows one background operation: the SSE stream first, polling GET /operations/{id} every second
// if EventSource fails. Drives a progress panel (see templates/cloud/_progress.html).

import { api } from "./api.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export function watchOperation(operationId, { onProgress = () => {}, onEnd = () => {} } = {}) {
  let finished = false;
  let source = null;
  let timer = null;
  const finish = (state, error) => {
    if (finished) return;
    finished = true;
    if (source) source.close();
    clearTimeout(timer);
    onEnd({ state, error });
  };
  const poll = async () => {
    if (finished) return;
    try {
      const op = await api("GET", `/operations/${operationId}`);
      onProgress({ progress: op.progress, step: op.step || op.state });
      if (FINAL.has(op.state)) return finish(op.state, op.error);
    } catch (err) {
      if (err.status === 404 || err.status === 403) return finish("failed", err.message);
    }
    timer = setTimeout(poll, 1000);
  };
  const fallback = () => {
    if (source) source.close();
    source = null;
    if (!finished) {
      clearTimeout(timer);
      poll();
    }
  };
  // A stream that stays open but goes quiet (a proxy buffering it, a lost end event) must not hang
  // the page: while it is open, the database state is still checked every few seconds.
  const watchdog = async () => {
    if (finished || !source) return;
    try {
      const op = await api("GET", `/operations/${operationId}`);
      if (FINAL.has(op.state)) return finish(op.state, op.error);
    } catch {
      /* the stream or the next check settles it */
    }
    if (!finished && source) timer = setTimeout(watchdog, 5000); // else polling owns the timer now
  };
  if ("EventSource" in window) {
    try {
      source = new EventSource(`/api/v1/operations/${operationId}/events`, { withCredentials: true });
      source.addEventListener("progress", (event) => {
        try {
          const data = JSON.parse(event.data);
          onProgress({ progress: data.progress, step: data.step, done: data.done, total: data.total });
        } catch {
          /* a malformed event: the next one or the end event carries on */
        }
      });
      source.addEventListener("end", (event) => {
        let data = {};
        try {
          data = JSON.parse(event.data);
        } catch {
          /* fall through with an unknown state: polling settles it */
        }
        if (data.state) finish(data.state, data.error);
        else fallback();
      });
      source.onerror = () => {
        // Stream missing (404), dropped or refused: polling is the source of truth from here on.
        if (!finished) fallback();
      };
      timer = setTimeout(watchdog, 5000);
    } catch {
      fallback();
    }
  } else {
    poll();
  }
  return { stop: () => finish("detached", null) };
}

// A progress panel: <section class="operation"> with .progress, .progress-fill, .progress-step, .progress-error.
export function progressPanel(panel) {
  const bar = panel.querySelector(".progress");
  const fill = panel.querySelector(".progress-fill");
  const step = panel.querySelector(".progress-step");
  const error = panel.querySelector(".progress-error");
  const set = (progress, text) => {
    const value = Math.max(0, Math.min(100, Math.round(Number(progress) || 0)));
    fill.style.width = `${value}%`;
    bar.setAttribute("aria-valuenow", String(value));
    bar.setAttribute("aria-valuetext", `${value}%${text ? ": " + text : ""}`);
    if (text) step.textContent = text;
  };
  return {
    show(title) {
      if (title) panel.querySelector("h2").textContent = title;
      error.hidden = true;
      panel.hidden = false;
      panel.dataset.state = "running";
    },
    progress({ progress, step: text, done, total }) {
      const counted = total ? ` (${done || 0}/${total})` : "";
      set(progress, text ? text + counted : null);
    },
    end({ state, error: message }) {
      panel.dataset.state = state;
      if (state === "succeeded") set(100, "Done");
      else {
        error.textContent = message || `The operation ${state}.`;
        error.hidden = false;
      }
    },
    set,
  };
}
