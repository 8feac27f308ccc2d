// Workspace dashboard: while a service is still changing, refresh the status badges every few seconds.

import { api } from "./api.js";

const list = document.getElementById("service-cards");
const CHANGING = new Set(["pending", "deploying", "upgrading", "deleting"]);

async function refresh() {
  try {
    const page = await api("GET", `/workspaces/${list.dataset.workspaceId}/services?per_page=100`);
    const byId = new Map(page.items.map((service) => [service.id, service]));
    for (const card of list.querySelectorAll("[data-service-id]")) {
      const service = byId.get(card.dataset.serviceId);
      const state = service ? service.state : "deleted";
      if (state === card.dataset.state) continue;
      if (state === "deleted") {
        card.remove();
        continue;
      }
      card.dataset.state = state;
      const badge = card.querySelector(".state");
      badge.className = `state state-${state}`;
      badge.dataset.state = state;
      badge.textContent = state.charAt(0).toUpperCase() + state.slice(1);
    }
  } catch {
    return; // the list API is unavailable: keep the server-rendered badges, stop polling
  }
  if ([...list.querySelectorAll("[data-service-id]")].some((card) => CHANGING.has(card.dataset.state))) {
    setTimeout(refresh, 3000);
  }
}

if (list) setTimeout(refresh, 2000);
