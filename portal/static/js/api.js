// Kaiden's REST API from the browser: session cookie + CSRF header, JSON in and out, errors as ApiError.

const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(typeof error === "string" ? error : error.message || `Request failed (${status})`);
    this.status = status;
    this.code = error.code || null;
    this.fields = (error && error.fields) || {};
    // A busy service answers 409 naming the operation that holds it.
    this.operationId = (body && body.operation_id) || error.operation_id || null;
    // An engineer's second session on a node answers 409 naming the open one.
    this.sessionId = (body && body.session_id) || error.session_id || null;
  }
}

export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = CSRF;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("/api/v1" + path, init);
  } catch {
    throw new ApiError(0, { error: { message: "The portal cannot be reached; check your connection and retry." } });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Field errors next to their fields: each slot is an element with data-error-for="<field path>".
// Returns the messages no slot took (shown in the form's general alert by the caller).
export function showFieldErrors(root, fields) {
  clearFieldErrors(root);
  const leftover = [];
  let first = null;
  for (const [path, message] of Object.entries(fields || {})) {
    const slot = root.querySelector(`[data-error-for="${CSS.escape(path)}"]`);
    if (!slot) {
      leftover.push(`${path}: ${message}`);
      continue;
    }
    slot.textContent = message;
    slot.hidden = false;
    const input = slot.closest(".field")?.querySelector("input, select, textarea");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
  }
  if (first) first.focus();
  return leftover;
}

export function clearFieldErrors(root) {
  for (const slot of root.querySelectorAll("[data-error-for]")) {
    slot.textContent = "";
    slot.hidden = true;
  }
  for (const input of root.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

export function showAlert(element, message) {
  element.textContent = message || "";
  element.hidden = !message;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// The values of a generated value form: {"<spec key>": value}. Empty passwords are left out when
// `skipEmptyPasswords` (edit: keep the current secret); empty optional text fields are left out.
export function collectValues(root, { skipEmptyPasswords = false } = {}) {
  const values = {};
  for (const input of root.querySelectorAll("[data-key]")) {
    const key = input.dataset.key;
    switch (input.dataset.type) {
      case "boolean":
        values[key] = input.checked;
        break;
      case "number":
        if (input.value !== "") values[key] = Number(input.value);
        break;
      case "password":
        if (input.value !== "" || (!skipEmptyPasswords && input.required)) values[key] = input.value;
        break;
      default:
        if (input.value !== "") values[key] = input.value;
    }
  }
  return values;
}
