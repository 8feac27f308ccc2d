// Cluster pages: copy buttons, confirm-before-submit, and status polling of the REST API (same-origin session).
(function () {
  "use strict";

  function formatTime(value) {
    if (!value) return "never";
    var d = new Date(value);
    if (isNaN(d.getTime())) return value;
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC");
  }

  function dash(value) {
    return value === null || value === undefined || value === "" ? "\u2014" : String(value);
  }

  function badge(value) {
    var span = document.createElement("span");
    span.className = "status status-" + value;
    span.textContent = value;
    return span;
  }

  function setField(scope, name, value) {
    var cells = scope.querySelectorAll('[data-field="' + name + '"]');
    cells.forEach(function (cell) {
      if (name === "status") {
        cell.replaceChildren(badge(value));
      } else if (name === "last_heartbeat") {
        cell.textContent = formatTime(value);
      } else {
        cell.textContent = dash(value);
      }
    });
  }

  function applyCluster(scope, item) {
    ["status", "last_heartbeat", "k8s_version", "node_count", "controller_version"].forEach(function (name) {
      setField(scope, name, item[name]);
    });
  }

  function renderNodes(table, items) {
    var body = table.tBodies[0];
    var rows = items.map(function (node) {
      var tr = document.createElement("tr");
      tr.dataset.id = node.id;
      var cells = [
        document.createTextNode(node.name),
        badge(node.status),
        document.createTextNode(dash(node.internal_ip)),
        badge(node.agent_status),
        document.createTextNode(dash(node.agent_version)),
        document.createTextNode(dash(node.cpu_capacity)),
        document.createTextNode(dash(node.memory_capacity)),
        document.createTextNode(formatTime(node.last_seen)),
      ];
      cells.forEach(function (content) {
        var td = document.createElement("td");
        td.appendChild(content);
        tr.appendChild(td);
      });
      return tr;
    });
    if (rows.length) body.replaceChildren.apply(body, rows);
  }

  function note(text) {
    document.querySelectorAll("[data-poll-note]").forEach(function (el) { el.textContent = text; });
  }

  function poll(el) {
    var url = el.dataset.poll;
    var kind = el.dataset.pollKind;
    var seconds = parseInt(el.dataset.pollSeconds || "5", 10);
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 401) throw new Error("signed out");
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          if (kind === "clusters") {
            data.items.forEach(function (item) {
              var row = el.querySelector('tr[data-id="' + item.id + '"]');
              if (row) applyCluster(row, item);
            });
          } else if (kind === "cluster") {
            applyCluster(document, data);
          } else if (kind === "nodes") {
            renderNodes(el, data.items);
          } else if (kind === "operation") {
            el.querySelector('[data-op-field="state"]').replaceChildren(badge(data.state));
            var bar = el.querySelector('[data-op-field="progress"]');
            bar.value = data.progress;
            bar.textContent = data.progress + "%";
            el.querySelector('[data-op-field="step"]').textContent = data.step || "";
            var error = el.querySelector('[data-op-field="error"]');
            error.textContent = data.error || "";
            error.hidden = !data.error;
            if (["succeeded", "failed", "cancelled"].indexOf(data.state) >= 0) return;  // final: stop polling
          }
          note("Updated " + new Date().toLocaleTimeString() + "; refreshes every " + seconds + " seconds.");
          setTimeout(tick, seconds * 1000);
        })
        .catch(function (error) {
          note("Could not refresh (" + error.message + ").");
          if (error.message !== "signed out") setTimeout(tick, seconds * 2000);
        });
    }
    setTimeout(tick, seconds * 1000);
  }

  function copy(button) {
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    var text = source.textContent;
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand("copy");
      done();
    }
  }

  document.querySelectorAll("[data-poll]").forEach(poll);
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () { copy(button); });
  });
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
