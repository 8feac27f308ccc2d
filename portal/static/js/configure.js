// Configure & launch: reference id derived from the name, live availability checks, client-side
// hints, then POST /workspaces/{ws}/services and a progress bar until the service runs.
// The server is the authority: its field errors are shown next to the fields.

import { api, clearFieldErrors, collectValues, debounce, showAlert, showFieldErrors } from "./api.js";
import { progressPanel, watchOperation } from "./operations.js";

const form = document.getElementById("configure-form");
const workspaceId = form.dataset.workspaceId;
const nameInput = document.getElementById("svc-name");
const referenceInput = document.getElementById("svc-reference");
// Absent for apps without a web UI (no ingress: the server ignores any subdomain).
const subdomainInput = document.getElementById("svc-subdomain");
const named = [["reference_id", referenceInput], ["subdomain", subdomainInput]].filter(([, input]) => input);
const privateInput = document.getElementById("svc-private");
const launchButton = document.getElementById("launch-button");
const formError = document.getElementById("form-error");
const panelElement = document.getElementById("launch-progress");
const LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
let referenceEdited = false;
let subdomainEdited = false;

export function slugify(text, max = 40) {
  return text
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, max)
    .replace(/-+$/g, "");
}

function statusOf(field) {
  return document.getElementById(`svc-${field === "reference_id" ? "reference" : field}-status`);
}

function setStatus(field, text, ok) {
  const element = statusOf(field);
  element.textContent = text;
  element.classList.toggle("ok", ok === true);
  element.classList.toggle("bad", ok === false);
}

// Client-side hint only: the same RFC 1123 label rule the server applies.
function localProblem(value) {
  if (!value) return null;
  if (value.length > 63) return "at most 63 characters";
  if (!LABEL.test(value)) return "lowercase letters, digits and dashes; must start and end with a letter or digit";
  return null;
}

async function check() {
  const params = new URLSearchParams();
  const asked = [];
  for (const [field, input] of named) {
    const value = input.value.trim();
    const problem = localProblem(value);
    if (input.disabled) continue;
    if (!value) setStatus(field, "", null);
    else if (problem) setStatus(field, `✗ ${problem}`, false);
    else {
      params.set(field, value);
      asked.push(field);
      setStatus(field, "Checking…", null);
    }
  }
  if (!asked.length) return;
  try {
    const answer = await api("GET", `/workspaces/${workspaceId}/services/check?${params}`);
    for (const field of asked) {
      const result = answer[field];
      if (!result) continue;
      const input = named.find(([name]) => name === field)[1];
      if (result.value !== undefined && result.value !== input.value.trim()) continue; // stale answer
      if (result.available) setStatus(field, field === "subdomain" ? "✓ Available" : "✓ Available in this workspace", true);
      else setStatus(field, `✗ ${result.reason || "Not available"}`, false);
    }
  } catch (err) {
    for (const field of asked) setStatus(field, err.status === 422 ? `✗ ${err.fields[field] || err.message}` : "", err.status === 422 ? false : null);
  }
}
const checkSoon = debounce(check, 300);

nameInput.addEventListener("input", () => {
  if (!referenceEdited) referenceInput.value = slugify(nameInput.value);
  if (subdomainInput && !subdomainEdited) subdomainInput.value = referenceInput.value;
  checkSoon();
});
referenceInput.addEventListener("input", () => {
  referenceEdited = referenceInput.value !== "";
  if (subdomainInput && !subdomainEdited) subdomainInput.value = referenceInput.value;
  checkSoon();
});
if (subdomainInput) {
  subdomainInput.addEventListener("input", () => {
    subdomainEdited = subdomainInput.value !== "";
    checkSoon();
  });
  // A private service is not published: no subdomain to choose or check.
  privateInput.addEventListener("change", () => {
    subdomainInput.disabled = privateInput.checked;
    if (privateInput.checked) setStatus("subdomain", "Private services get no public address.", null);
    else checkSoon();
  });
}

function clientHints() {
  const fields = {};
  if (!nameInput.value.trim()) fields.name = "required";
  for (const [field, input] of named) {
    if (input.disabled) continue;
    const problem = localProblem(input.value.trim());
    if (problem) fields[field] = problem;
  }
  for (const input of form.querySelectorAll("[data-key][required]")) {
    if (input.value === "") fields[`values.${input.dataset.key}`] = "required";
  }
  return fields;
}

function setBusy(busy) {
  launchButton.disabled = busy;
  launchButton.textContent = busy ? "Launching…" : "Launch application";
  form.setAttribute("aria-busy", String(busy));
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showAlert(formError, "");
  clearFieldErrors(form);
  const hints = clientHints();
  if (Object.keys(hints).length) {
    showFieldErrors(form, hints);
    showAlert(formError, "Please fix the highlighted fields.");
    return;
  }
  const body = {
    template_id: form.dataset.templateId,
    name: nameInput.value.trim(),
    is_private_network: privateInput.checked,
    values: collectValues(form),
  };
  if (referenceInput.value.trim()) body.reference_id = referenceInput.value.trim();
  if (subdomainInput && subdomainInput.value.trim() && !subdomainInput.disabled) body.subdomain = subdomainInput.value.trim();
  setBusy(true);
  let answer;
  try {
    answer = await api("POST", `/workspaces/${workspaceId}/services`, body);
  } catch (err) {
    setBusy(false);
    const leftover = showFieldErrors(form, err.fields);
    showAlert(formError, [err.message, ...leftover].join(" "));
    if (!Object.keys(err.fields || {}).length) formError.focus?.();
    return;
  }
  follow(answer.service, answer.operation);
});

function follow(service, operation) {
  const serviceUrl = form.dataset.serviceUrl.replace("00000000-0000-0000-0000-000000000000", service.id);
  const panel = progressPanel(panelElement);
  form.hidden = true;
  panel.show(`Launching ${service.name}…`);
  const link = panelElement.querySelector(".service-link");
  link.href = serviceUrl;
  link.closest(".progress-links").hidden = false;
  panelElement.scrollIntoView({ block: "nearest" });
  panel.progress({ progress: operation.progress, step: operation.step || "Queued" });
  watchOperation(operation.id, {
    onProgress: (event) => panel.progress(event),
    onEnd: (end) => {
      panel.end(end);
      if (end.state === "succeeded") window.location.assign(serviceUrl);
    },
  });
}
