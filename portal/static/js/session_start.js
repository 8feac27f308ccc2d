// The start form: POST /api/v1/tickets/{id}/sessions, field errors next to the fields, then the session page.
import { api, clearFieldErrors, showAlert, showFieldErrors } from "./api.js";

const form = document.getElementById("start-session-form");
const alertBox = document.getElementById("start-session-error");
const button = document.getElementById("start-session-button");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearFieldErrors(form);
  showAlert(alertBox, "");
  const duration = form.elements.duration_minutes.value.trim();
  const body = {
    node_id: form.elements.node_id.value,
    services: [...form.querySelectorAll('input[name="services"]:checked')].map((box) => box.value),
    duration_minutes: duration === "" ? null : Number(duration),
  };
  button.disabled = true;
  try {
    const answer = await api("POST", `/tickets/${form.dataset.ticketId}/sessions`, body);
    const operation = answer.operation ? `?operation=${encodeURIComponent(answer.operation.id)}` : "";
    window.location.assign(`/sessions/${answer.session.id}${operation}`);
  } catch (err) {
    button.disabled = false;
    const leftover = showFieldErrors(form, err.fields);
    showAlert(alertBox, [err.message, ...leftover].join(" "));
    if (err.sessionId) {  // the engineer's open session on that node: one click away
      const link = document.createElement("a");
      link.href = `/sessions/${encodeURIComponent(err.sessionId)}`;
      link.textContent = " Open that session";
      link.id = "open-session-link";
      alertBox.append(link);
    }
  }
});
