// opencode-manager dashboard: makes the server-rendered page live. Without this script the page
// still shows everything and its forms still work; with it, every change arrives over
// Server-Sent Events and the buttons answer in place.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf"]')?.content ?? "";
  const live = document.getElementById("live");
  // What reached the screen, and when: [{at: board time (ms), shown: Date.now()}].
  window.ocmUpdates = [];

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const dash = (v) => (v === null || v === undefined || v === "" ? "—" : esc(v));
  const bytes = (n) => {
    const mib = n / (1024 * 1024);
    return mib >= 1024 ? (mib / 1024).toFixed(1) + " GiB" : Math.round(mib) + " MiB";
  };
  const span = (s) => {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  };

  function form(name, action, label) {
    return `<form method="post" action="/project/${esc(name)}/${action}">` +
      `<input type="hidden" name="csrf" value="${esc(csrf)}">` +
      `<button type="submit" class="${action}">${label} ${esc(name)}</button></form>`;
  }

  function rowHtml(r) {
    const running = ["running", "starting", "unhealthy"].includes(r.state);
    const memory = r.memory_bytes == null ? null
      : r.memory_limit == null ? bytes(r.memory_bytes)
      : `${bytes(r.memory_bytes)} / ${bytes(r.memory_limit)}`;
    const exit = r.last_error ?? r.last_exit;
    const n = esc(r.name);
    return `<th scope="row"><a href="/project/${n}">${n}</a></th>` +
      `<td data-col="agent">${esc(r.agent)}</td>` +
      `<td data-col="state"><span class="state state-${r.state}">${r.state}</span></td>` +
      `<td data-col="port">${dash(r.port)}</td><td data-col="pid">${dash(r.pid)}</td>` +
      `<td data-col="uptime">${r.uptime_secs == null ? "—" : span(r.uptime_secs)}</td>` +
      `<td data-col="restarts">${r.restarts}</td>` +
      `<td data-col="exit" class="exit">${dash(exit)}</td>` +
      `<td data-col="memory">${dash(memory)}</td>` +
      `<td data-col="cpu">${r.cpu_percent == null ? "—" : Math.round(r.cpu_percent) + "%"}</td>` +
      `<td data-col="busy">${r.busy_sessions}</td><td data-col="permissions">${r.pending_permissions}</td>` +
      `<td data-col="model">${dash(r.model)}</td><td data-col="isolation">${dash(r.isolation)}</td>` +
      `<td data-col="actions" class="actions">` +
      (r.wanted || running ? form(r.name, "stop", "Stop") : form(r.name, "start", "Start")) +
      form(r.name, "restart", "Restart") + `</td>`;
  }

  function putRow(tbody, r) {
    let tr = document.getElementById("row-" + r.name);
    if (!tr) {
      tr = document.createElement("tr");
      tr.id = "row-" + r.name;
      tbody.appendChild(tr);
    }
    const html = rowHtml(r);
    if (tr.dataset.html !== html) {
      tr.innerHTML = html;
      tr.dataset.html = html;
    }
    tr.dataset.project = r.name;
    tr.dataset.state = r.state;
  }

  function showBoard(board) {
    const gateway = document.getElementById("gateway");
    if (gateway) {
      gateway.textContent = board.gateway.state;
      gateway.className = board.gateway.open ? "up" : "down";
    }
    const uptime = document.getElementById("daemon-uptime");
    if (uptime) uptime.textContent = span(board.daemon_uptime_secs);
    const budget = document.getElementById("budget");
    if (budget) {
      budget.textContent = board.daemon.memory_budget == null
        ? `${bytes(board.memory_used)} (no budget)`
        : `${bytes(board.memory_used)} of ${bytes(board.daemon.memory_budget)}`;
    }
    const tbody = document.querySelector("#projects tbody");
    const names = new Set(board.projects.map((r) => r.name));
    for (const tr of [...tbody.querySelectorAll("tr")]) {
      if (!names.has(tr.dataset.project)) tr.remove();
    }
    for (const r of board.projects) putRow(tbody, r);
    received = { at: Date.now(), board };
    document.getElementById("empty")?.toggleAttribute("hidden", board.projects.length > 0);
    window.ocmUpdates.push({ at: board.at_ms, shown: Date.now() });
  }

  // Uptimes tick between updates, from the last board received (no request).
  let received = null;
  setInterval(() => {
    if (!received) return;
    const gone = Math.floor((Date.now() - received.at) / 1000);
    for (const r of received.board.projects) {
      if (r.uptime_secs == null) continue;
      const cell = document.querySelector(`#row-${CSS.escape(r.name)} [data-col=uptime]`);
      if (cell) cell.textContent = span(r.uptime_secs + gone);
    }
  }, 1000);

  function showActivity(activity, project) {
    const list = document.getElementById("permissions");
    if (list) {
      list.innerHTML = activity.permissions.map((p) => {
        const forms = [["once", "Allow once"], ["always", "Always"], ["reject", "Reject"]].map(([reply, label]) =>
          `<form method="post" action="/project/${esc(project)}/permission/${esc(p.id)}">` +
          `<input type="hidden" name="csrf" value="${esc(csrf)}"><input type="hidden" name="reply" value="${reply}">` +
          `<button type="submit" class="${reply}" aria-label="${label}: ${esc(p.what)}">${label}</button></form>`).join("");
        return `<li data-permission="${esc(p.id)}"><span>${esc(p.what)}</span> ${forms}</li>`;
      }).join("");
      document.getElementById("no-permissions")?.toggleAttribute("hidden", activity.permissions.length > 0);
    }
    const sessions = document.querySelector("#sessions tbody");
    if (sessions) {
      sessions.innerHTML = activity.sessions.map((s) =>
        `<tr><td><code>${esc(s.id)}</code></td><td>${esc(s.title)}</td><td>${esc(s.state)}</td></tr>`).join("");
    }
  }

  function resetLog(lines) {
    const log = document.getElementById("log");
    if (!log) return;
    log.textContent = lines.map((l) => l + "\n").join("");
    log.scrollTop = log.scrollHeight;
  }

  function appendLog(lines) {
    const log = document.getElementById("log");
    if (!log) return;
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent += lines.map((l) => l + "\n").join("");
    const all = log.textContent.split("\n");
    if (all.length > 2000) log.textContent = all.slice(-2000).join("\n");
    if (atEnd) log.scrollTop = log.scrollHeight;
  }

  function connect(url, handlers) {
    const source = new EventSource(url);
    source.onopen = () => { if (live) live.textContent = "live"; };
    source.onerror = () => {
      if (!live) return;
      // A closed source was refused (the session ended): only a new login helps.
      live.textContent = source.readyState === EventSource.CLOSED
        ? "session ended: run opencode-manager dashboard to log in again"
        : "reconnecting…";
    };
    for (const [kind, handle] of Object.entries(handlers)) {
      source.addEventListener(kind, (e) => handle(JSON.parse(e.data)));
    }
  }

  const heading = document.getElementById("project");
  if (heading) {
    const project = heading.dataset.project;
    const tbody = document.querySelector("#projects tbody");
    connect(`/project/${encodeURIComponent(project)}/events`, {
      row: (r) => putRow(tbody, r),
      log_reset: resetLog,
      log: appendLog,
      activity: (a) => showActivity(a, project),
    });
  } else if (document.getElementById("projects")) {
    connect("/events", { board: showBoard });
  }

  // Buttons answer in place: the same POST the form makes, asking for the reply as JSON.
  const notice = document.createElement("p");
  notice.id = "notice";
  notice.setAttribute("role", "status");
  document.body.appendChild(notice);
  document.addEventListener("submit", async (event) => {
    const target = event.target;
    if (!(target instanceof HTMLFormElement) || target.method.toLowerCase() !== "post") return;
    event.preventDefault();
    const button = target.querySelector("button");
    if (button) button.disabled = true;
    notice.textContent = (button?.textContent ?? "Working") + "…";
    try {
      const response = await fetch(target.action, {
        method: "POST",
        headers: { "Accept": "application/json", "X-CSRF-Token": csrf },
        body: new URLSearchParams(new FormData(target)),
      });
      const reply = await response.json().catch(() => ({ message: response.statusText }));
      notice.textContent = reply.message ?? (response.ok ? "Done" : "Failed");
    } catch (err) {
      notice.textContent = "The dashboard did not answer: " + err;
    } finally {
      if (button) button.disabled = false;
    }
  });
})();
