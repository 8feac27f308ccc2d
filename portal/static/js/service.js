// Service detail: tabs, the Delete modal, Rollback, Edit → Preview → Apply upgrade, and the progress
// of whatever operation runs on the service (buttons stay disabled while one does).

import { api, clearFieldErrors, collectValues, showAlert, showFieldErrors } from "./api.js";
import { progressPanel, watchOperation } from "./operations.js";

const page = document.getElementById("service-page");
const serviceId = page.dataset.serviceId;
const pageError = document.getElementById("page-error");
const panelElement = document.getElementById("operation-panel");
const panel = progressPanel(panelElement);

// ---------------------------------------------------------------- tabs (ARIA tabs pattern)

const tabs = [...document.querySelectorAll('[role="tab"]')];
function selectTab(tab, focus = false, remember = true) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  if (remember) history.replaceState(null, "", `#${tab.getAttribute("aria-controls")}`); // survives the reload after an operation
}
for (const [index, tab] of tabs.entries()) {
  tab.addEventListener("click", (event) => {
    event.preventDefault();
    selectTab(tab);
  });
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) {
      event.preventDefault();
      selectTab(tabs[(index + step + tabs.length) % tabs.length], true);
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      selectTab(tabs[event.key === "Home" ? 0 : tabs.length - 1], true);
    }
  });
}
selectTab(tabs.find((tab) => `#${tab.getAttribute("aria-controls")}` === location.hash) || tabs[0], false, false);

// ---------------------------------------------------------------- one operation at a time

function setBusy(busy) {
  for (const button of document.querySelectorAll(".op-action")) button.disabled = busy;
  const menu = document.getElementById("rollback-menu");
  if (menu && busy) menu.open = false;
  page.setAttribute("aria-busy", String(busy));
}

function setState(state) {
  page.dataset.state = state;
  for (const badge of document.querySelectorAll(".state")) {
    badge.className = `state state-${state}`;
    badge.dataset.state = state;
    badge.textContent = state.charAt(0).toUpperCase() + state.slice(1);
  }
}

// Follow `operation` in the panel; `then(end)` runs when it is over (default: reload the page).
function follow(operation, title, then) {
  setBusy(true);
  panel.show(title);
  panel.progress({ progress: operation.progress || 0, step: operation.step || operation.state || "Queued" });
  watchOperation(operation.id, {
    onProgress: (event) => panel.progress(event),
    onEnd: (end) => {
      panel.end(end);
      setBusy(false);
      (then || defaultEnd)(end);
    },
  });
}

// Success: reload (new revision, values, URL). Otherwise keep the error in the panel and refresh the badge.
async function defaultEnd(end) {
  if (end.state === "succeeded") {
    window.location.reload();
    return;
  }
  try {
    const service = await api("GET", `/services/${serviceId}`);
    setState(service.state);
  } catch {
    /* the panel already shows what went wrong */
  }
}

// A 409 naming the running operation: show it instead of failing.
function handleError(err, root) {
  if (err.status === 409 && err.operationId) {
    showAlert(pageError, err.message);
    follow({ id: err.operationId }, "Another operation is running");
    return;
  }
  const leftover = root ? showFieldErrors(root, err.fields) : Object.entries(err.fields || {}).map(([k, v]) => `${k}: ${v}`);
  showAlert(pageError, [err.message, ...leftover].join(" "));
}

if (panelElement.dataset.operationId) {
  const fill = panelElement.querySelector(".progress-fill");
  fill.style.width = `${fill.dataset.progress || 0}%`;
  const title = panelElement.querySelector(".operation-title").textContent;
  follow({ id: panelElement.dataset.operationId, progress: Number(fill.dataset.progress || 0) }, title);
}

// ---------------------------------------------------------------- delete (modal)

const dialog = document.getElementById("delete-dialog");
if (dialog) {
  const opener = document.getElementById("delete-button");
  const confirmInput = document.getElementById("delete-confirm");
  const confirmButton = document.getElementById("delete-confirm-button");
  const keepVolumes = document.getElementById("delete-keep-volumes");
  const deleteError = document.getElementById("delete-error");
  const close = () => {
    dialog.close();
    opener.focus();
  };
  opener.addEventListener("click", () => {
    confirmInput.value = "";
    confirmButton.disabled = true;
    showAlert(deleteError, "");
    dialog.showModal(); // native modal: focus moves inside, Escape closes, the page behind is inert
    confirmInput.focus();
  });
  document.getElementById("delete-cancel").addEventListener("click", close);
  dialog.addEventListener("cancel", () => opener.focus());
  confirmInput.addEventListener("input", () => {
    confirmButton.disabled = confirmInput.value.trim() !== page.dataset.referenceId;
  });
  document.getElementById("delete-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (confirmInput.value.trim() !== page.dataset.referenceId) return;
    confirmButton.disabled = true;
    try {
      const answer = await api("DELETE", `/services/${serviceId}?keep_volumes=${keepVolumes.checked}`);
      dialog.close();
      setState(answer.service?.state || "deleting");
      follow(answer.operation, "Deleting…", (end) => {
        if (end.state === "succeeded") {
          setState("deleted");
          window.location.assign(page.dataset.dashboardUrl);
        } else defaultEnd(end);
      });
    } catch (err) {
      confirmButton.disabled = false;
      if (err.status === 409 && err.operationId) {
        dialog.close();
        handleError(err);
      } else showAlert(deleteError, err.message);
    }
  });
}

// ---------------------------------------------------------------- rollback

const rollbackForm = document.getElementById("rollback-form");
if (rollbackForm) {
  rollbackForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const revision = Number(document.getElementById("rollback-revision").value);
    showAlert(pageError, "");
    try {
      const answer = await api("POST", `/services/${serviceId}/rollback`, { revision });
      document.getElementById("rollback-menu").open = false;
      setState(answer.service?.state || "upgrading");
      follow(answer.operation, `Rolling back to revision ${revision}…`);
    } catch (err) {
      handleError(err);
    }
  });
}

// ---------------------------------------------------------------- edit → preview → apply upgrade

const upgradeForm = document.getElementById("upgrade-form");
if (upgradeForm) {
  const editButton = document.getElementById("edit-values");
  const previewSection = document.getElementById("preview-result");
  const chartInput = document.getElementById("chart-version");
  let pending = null; // the body the preview was made for: Apply sends exactly that

  const changes = () => {
    const body = { values: collectValues(upgradeForm, { skipEmptyPasswords: true }) };
    if (chartInput.value.trim() && chartInput.value.trim() !== chartInput.dataset.current) body.chart_version = chartInput.value.trim();
    return body;
  };
  editButton.addEventListener("click", () => {
    upgradeForm.hidden = false;
    editButton.setAttribute("aria-expanded", "true");
    upgradeForm.querySelector("input, select")?.focus();
  });
  document.getElementById("cancel-edit").addEventListener("click", () => {
    upgradeForm.hidden = true;
    previewSection.hidden = true;
    editButton.setAttribute("aria-expanded", "false");
    editButton.focus();
  });
  upgradeForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(upgradeForm);
    showAlert(pageError, "");
    previewSection.hidden = true;
    pending = changes();
    try {
      const answer = await api("POST", `/services/${serviceId}/preview`, pending);
      follow(answer.operation, "Previewing changes…", async (end) => {
        if (end.state !== "succeeded") return;
        panelElement.hidden = true;
        const operation = await api("GET", `/operations/${answer.operation.id}`);
        showPreview(operation.result || {});
      });
    } catch (err) {
      handleError(err, upgradeForm);
    }
  });

  function showPreview(result) {
    const rows = (result.values_diff || []).map((change) => {
      const row = document.createElement("tr");
      for (const text of [change.key, change.old, change.new]) {
        const cell = document.createElement("td");
        cell.textContent = text === undefined || text === null ? "—" : typeof text === "object" ? JSON.stringify(text) : String(text);
        row.append(cell);
      }
      return row;
    });
    const body = document.getElementById("preview-diff");
    body.replaceChildren(...rows);
    if (!rows.length) {
      const row = document.createElement("tr");
      const cell = document.createElement("td");
      cell.colSpan = 3;
      cell.textContent = "No value changes.";
      row.append(cell);
      body.append(row);
    }
    const chart = result.chart_version;
    document.getElementById("preview-chart").textContent =
      chart && chart.old !== chart.new ? `Chart version: ${chart.old} → ${chart.new}` : "Chart version unchanged.";
    const plan = result.plan || {};
    document.getElementById("preview-plan").textContent =
      `${plan.create || 0} to create, ${plan.update || 0} to update, ${plan.delete || 0} to delete, ${plan.same || 0} unchanged.`;
    const steps = (plan.steps || []).filter((step) => step.op !== "same");
    document.getElementById("preview-steps").replaceChildren(...steps.map((step) => {
      const item = document.createElement("li");
      item.textContent = `${step.op} ${step.type} ${step.name}`;
      return item;
    }));
    previewSection.hidden = false;
    document.getElementById("apply-button").focus();
  }

  // Apply sends exactly what was previewed: any edit after the preview needs a new one.
  upgradeForm.addEventListener("input", () => {
    previewSection.hidden = true;
    pending = null;
  });
  document.getElementById("discard-preview").addEventListener("click", () => {
    previewSection.hidden = true;
    pending = null;
  });
  document.getElementById("apply-button").addEventListener("click", async () => {
    if (!pending) return;
    showAlert(pageError, "");
    try {
      const answer = await api("PATCH", `/services/${serviceId}`, pending);
      previewSection.hidden = true;
      upgradeForm.hidden = true;
      setState(answer.service?.state || "upgrading");
      follow(answer.operation, "Upgrading…");
    } catch (err) {
      handleError(err, upgradeForm);
    }
  });
}
