// fleetdeck console: confirmations, auto-refresh, local times and the live run log. No inline script (CSP).
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const message = form.dataset.confirm;
  if (message && !(event.submitter && "noConfirm" in event.submitter.dataset) && !window.confirm(message)) {
    event.preventDefault();
  }
});

document.addEventListener("DOMContentLoaded", () => {
  for (const cell of document.querySelectorAll("[data-time]")) {
    const seconds = Number(cell.dataset.time);
    if (seconds) cell.textContent = new Date(seconds * 1000).toLocaleString();
  }

  const refresh = document.getElementById("auto-refresh");
  if (refresh) {
    window.setInterval(() => { if (refresh.checked) window.location.reload(); }, Number(refresh.dataset.seconds) * 1000);
  }

  const log = document.getElementById("log");
  if (log) follow(log);
});

// The run's events through the console's SSE stream; EventSource reconnects by itself and sends
// Last-Event-ID, so the log resumes where it stopped. At the end the page reloads for the per-host results.
function follow(log) {
  const status = document.getElementById("status");
  const source = new EventSource(log.dataset.events);
  const seen = new Set();
  const show = (event) => {
    const data = JSON.parse(event.data);
    if (seen.has(data.seq)) return;
    seen.add(data.seq);
    if (data.stdout) log.textContent += data.stdout + "\n";
    log.scrollTop = log.scrollHeight;
  };
  for (const type of ["verbose", "debug", "warning", "error", "deprecated", "system_warning",
    "playbook_on_start", "playbook_on_play_start", "playbook_on_task_start", "playbook_on_handler_task_start",
    "playbook_on_cleanup_task_start", "playbook_on_include", "playbook_on_notify", "playbook_on_stats",
    "playbook_on_no_hosts_matched", "playbook_on_no_hosts_remaining", "runner_on_start", "runner_on_ok",
    "runner_on_failed", "runner_on_skipped", "runner_on_unreachable", "runner_on_file_diff",
    "runner_on_async_poll", "runner_on_async_ok", "runner_on_async_failed", "runner_item_on_ok",
    "runner_item_on_failed", "runner_item_on_skipped", "runner_retry"]) {
    source.addEventListener(type, show);
  }
  const finish = (event) => {
    source.close();
    const data = JSON.parse(event.data);
    status.textContent = data.status;
    status.className = "badge run-" + data.status;
    log.dataset.finished = "yes";
    if (log.dataset.reloaded !== "yes") window.setTimeout(() => window.location.reload(), 1500);
  };
  source.addEventListener("end", finish);
  source.addEventListener("shutdown", finish);
  if (log.dataset.finished === "yes") log.dataset.reloaded = "yes";
}
