// Marketplace: search as you type (debounced) and filter by category through GET /cloud/templates;
// the server-rendered cards and the plain GET form keep working without this script.

import { api, debounce } from "./api.js";

const form = document.getElementById("market-form");
const search = document.getElementById("market-search");
const categoryInput = document.getElementById("market-category");
const workspaceInput = document.getElementById("market-workspace");
const results = document.getElementById("market-results");
const status = document.getElementById("market-status");
const chips = [...document.querySelectorAll(".category-filter [data-category]")];
let generation = 0;

function priceLabel(value) {
  if (!value) return "Free";
  return Number.isInteger(value) ? `$${value}/mo` : `$${value.toFixed(2)}/mo`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function icon(template) {
  const url = template.icon_url || "";
  if (/^(https?:\/\/|\/)/.test(url)) return el("img", { class: "app-icon app-icon-md", src: url, alt: "", loading: "lazy" });
  return el("span", { class: "app-icon app-icon-md", "aria-hidden": "true" }, (template.name || "?")[0].toUpperCase());
}

function configureUrl(slug) {
  const workspace = workspaceInput?.value;
  if (!workspace) return null;
  return results.dataset.configureBase.replace("__WS__", encodeURIComponent(workspace)).replace("__SLUG__", encodeURIComponent(slug));
}

function card(template) {
  const head = el("div", { class: "card-head" }, icon(template),
    el("div", { class: "grow" }, el("h2", { class: "app-name" }, template.name),
      el("p", { class: "muted small" }, template.category_label || template.category)));
  const href = configureUrl(template.slug);
  if (href) head.append(el("a", { class: "button add", href, "aria-label": `Add ${template.name}`, title: `Add ${template.name}` }, "+"));
  const tags = el("ul", { class: "tags", "aria-label": "Tags" }, ...(template.tags || []).map((tag) => el("li", { class: "tag" }, tag)));
  return el("li", { class: "card app-card", "data-slug": template.slug }, head,
    el("p", {}, template.description || ""), tags, el("p", { class: "price" }, priceLabel(template.monthly_price)));
}

function syncUrl() {
  const params = new URLSearchParams();
  if (workspaceInput?.value) params.set("workspace", workspaceInput.value);
  if (search.value.trim()) params.set("search", search.value.trim());
  if (categoryInput.value) params.set("category", categoryInput.value);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

async function refresh() {
  const mine = ++generation;
  const params = new URLSearchParams({ per_page: "100" });
  if (search.value.trim()) params.set("search", search.value.trim());
  if (categoryInput.value) params.set("category", categoryInput.value);
  results.setAttribute("aria-busy", "true");
  try {
    const page = await api("GET", `/cloud/templates?${params}`);
    if (mine !== generation) return; // a newer search already answered
    results.replaceChildren(...page.items.map(card));
    if (!page.items.length) results.append(el("li", { class: "muted" }, "No apps match."));
    status.textContent = `${page.total} app${page.total === 1 ? "" : "s"}`;
  } catch (err) {
    if (mine === generation) status.textContent = `Search failed: ${err.message}`;
  } finally {
    if (mine === generation) results.removeAttribute("aria-busy");
  }
  syncUrl();
}

const refreshSoon = debounce(refresh, 250);
search.addEventListener("input", refreshSoon);
form.addEventListener("submit", (event) => {
  event.preventDefault();
  refresh();
});
for (const chip of chips) {
  chip.setAttribute("role", "button");
  chip.addEventListener("click", (event) => {
    event.preventDefault();
    categoryInput.value = chip.dataset.category;
    for (const other of chips) other.setAttribute("aria-pressed", String(other === chip));
    refresh();
  });
  chip.addEventListener("keydown", (event) => {
    if (event.key === " ") {
      event.preventDefault();
      chip.click();
    }
  });
}
if (workspaceInput && workspaceInput.tagName === "SELECT") {
  workspaceInput.addEventListener("change", () => {
    for (const link of results.querySelectorAll("a.add")) {
      const slug = link.closest("[data-slug]").dataset.slug;
      link.href = configureUrl(slug);
    }
    syncUrl();
  });
}
