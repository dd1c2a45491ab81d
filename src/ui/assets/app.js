// Retail Pulse dashboard: live updates on top of pages that are complete without script.
// - A job page polls GET /ui/live/jobs?ids={id} (the /api/jobs/{id} body, readable with the
//   dashboard's sign-in) and moves its progress bar, counts, status, finish time and per-store
//   errors in place until the job is done, and its webhook's state until that is settled.
// - Lists poll GET /ui/live/jobs?ids=… for the ongoing jobs they show.
// - The overview re-reads itself and swaps its sections.
// - The cancel button asks for confirmation in a dialog before it posts.
"use strict";

(function () {
  const JOB_POLL_MS = 1000;
  const WEBHOOK_POLL_MS = 2000;
  const LIST_POLL_MS = 2000;
  const OVERVIEW_POLL_MS = 5000;

  const fmt = new Intl.NumberFormat("en-US");
  const n = (x) => fmt.format(x);

  function utc(iso) {
    // "2026-11-28T10:00:01.250Z" -> "2026-11-28 10:00:01 UTC", as the server writes it.
    return iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "") + " UTC";
  }

  function took(created, finished) {
    const ms = Math.max(0, Date.parse(finished) - Date.parse(created));
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 3600000) return Math.floor(ms / 60000) + " min " + Math.floor((ms % 60000) / 1000) + " s";
    return Math.floor(ms / 3600000) + " h " + Math.floor((ms % 3600000) / 60000) + " min";
  }

  function setBadge(el, status) {
    if (!el) return;
    el.textContent = status;
    el.className = "badge badge-" + status;
  }

  function percent(images) {
    const done = images.succeeded + images.failed;
    return images.total === 0 ? 100 : Math.floor((done * 100) / images.total);
  }

  async function getJson(url) {
    const res = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!res.ok) throw new Error(url + " answered " + res.status);
    return res.json();
  }

  // One job's page.
  function liveJob(section) {
    const id = section.dataset.jobId;
    let timer = null;
    const byId = (x) => document.getElementById(x);

    function renderWebhook(webhook) {
      const box = byId("job-webhook");
      if (!box || !webhook) return;
      box.dataset.state = webhook.state;
      setBadge(byId("webhook-state"), webhook.state);
      const attempts = byId("webhook-attempts");
      if (attempts) attempts.textContent = n(webhook.attempts);
      const error = byId("webhook-error");
      if (error) error.textContent = webhook.last_error || "none";
    }

    function render(job) {
      renderWebhook(job.webhook);
      const img = job.images;
      const bar = byId("job-progress");
      bar.max = img.total;
      bar.value = img.succeeded + img.failed;
      bar.textContent = percent(img) + "%";
      byId("job-percent").textContent = percent(img) + "%";
      byId("job-total").textContent = n(img.total);
      byId("job-succeeded").textContent = n(img.succeeded);
      byId("job-failed").textContent = n(img.failed);
      byId("job-pending").textContent = n(img.pending);
      setBadge(byId("job-status"), job.status);
      section.dataset.status = job.status;
      if (job.status === "ongoing") return;

      const finished = byId("job-finished");
      if (job.finished_at) {
        finished.textContent = "";
        const t = document.createElement("time");
        t.dateTime = job.finished_at;
        t.textContent = utc(job.finished_at);
        finished.append(t, " (took " + took(job.created_at, job.finished_at) + ")");
      }
      const body = byId("job-errors-body");
      body.textContent = "";
      for (const e of job.error || []) {
        const tr = document.createElement("tr");
        const store = document.createElement("td");
        store.className = "mono";
        store.dataset.label = "Store";
        store.textContent = e.store_id;
        const msg = document.createElement("td");
        msg.dataset.label = "Error";
        msg.textContent = e.error;
        tr.append(store, msg);
        body.append(tr);
      }
      byId("job-errors").hidden = (job.error || []).length === 0;
      const form = byId("cancel-form");
      if (form) form.remove();
      byId("images-stale").hidden = false;
    }

    // Worth asking again: the job is running, or its webhook is still to be delivered.
    function unsettled(status, webhookState) {
      return status === "ongoing" || webhookState === "pending";
    }

    async function tick() {
      let wait = JOB_POLL_MS;
      try {
        const body = await getJson("/ui/live/jobs?ids=" + id);
        const job = body.jobs[0];
        if (!job) return;
        const wasOngoing = section.dataset.status === "ongoing";
        if (wasOngoing || job.status === "ongoing") render(job);
        else renderWebhook(job.webhook);
        const hook = job.webhook ? job.webhook.state : "none";
        if (!unsettled(job.status, hook)) return;
        // After the job, a webhook retries on a backoff of seconds: no need to ask as often.
        if (job.status !== "ongoing") wait = WEBHOOK_POLL_MS;
      } catch (err) {
        // A restart or a blip: keep trying.
      }
      timer = setTimeout(tick, wait);
    }
    const hook = byId("job-webhook");
    if (unsettled(section.dataset.status, hook ? hook.dataset.state : "none")) {
      timer = setTimeout(tick, JOB_POLL_MS);
    }
    return () => clearTimeout(timer);
  }

  // Ongoing jobs in a list.
  function liveList() {
    async function tick() {
      const items = Array.from(document.querySelectorAll(".job-item[data-live]")).slice(0, 100);
      if (items.length === 0) return;
      try {
        const ids = items.map((li) => li.dataset.jobId).join(",");
        const body = await getJson("/ui/live/jobs?ids=" + ids);
        for (const job of body.jobs) {
          const li = document.querySelector('.job-item[data-job-id="' + job.job_id + '"]');
          if (!li) continue;
          const img = job.images;
          const bar = li.querySelector("progress");
          bar.max = img.total;
          bar.value = img.succeeded + img.failed;
          bar.textContent = percent(img) + "%";
          const counts = li.querySelector('[data-field="counts"]');
          counts.textContent = n(img.succeeded + img.failed) + " / " + n(img.total) + " images";
          if (img.failed > 0) {
            const f = document.createElement("span");
            f.className = "fail";
            f.textContent = n(img.failed) + " failed";
            counts.append(" · ", f);
          }
          setBadge(li.querySelector('[data-field="status"]'), job.status);
          li.dataset.status = job.status;
          if (job.status !== "ongoing") delete li.dataset.live;
        }
      } catch (err) {
        // Try again at the next tick.
      }
      setTimeout(tick, LIST_POLL_MS);
    }
    setTimeout(tick, LIST_POLL_MS);
  }

  // The overview: re-read the page, swap each section marked data-refresh.
  function liveOverview() {
    const note = document.getElementById("live-note");
    if (note) note.textContent = "Live: refreshes every 5 seconds.";
    async function tick() {
      try {
        const res = await fetch(location.href, { cache: "no-store" });
        if (res.ok) {
          const doc = new DOMParser().parseFromString(await res.text(), "text/html");
          for (const fresh of doc.querySelectorAll("[data-refresh][id]")) {
            const old = document.getElementById(fresh.id);
            if (old && !old.contains(document.activeElement)) old.replaceWith(fresh);
          }
        }
      } catch (err) {
        // Try again at the next tick.
      }
      setTimeout(tick, OVERVIEW_POLL_MS);
    }
    setTimeout(tick, OVERVIEW_POLL_MS);
  }

  // "Cancel job…": a dialog asks first; its confirmation posts the form with confirm=yes.
  function confirmCancel(form) {
    const dialog = document.getElementById(form.dataset.confirm);
    if (!dialog || typeof dialog.showModal !== "function") return;
    form.addEventListener("submit", (event) => {
      if (form.elements.confirm.value === "yes") return;
      event.preventDefault();
      dialog.returnValue = "";
      dialog.showModal();
    });
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "cancel") {
        form.elements.confirm.value = "yes";
        form.submit();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const job = document.getElementById("job-live");
    if (job) liveJob(job);
    if (document.querySelector("[data-refresh]")) liveOverview();
    else if (document.querySelector(".job-item")) liveList();
    for (const form of document.querySelectorAll("form[data-confirm]")) confirmCancel(form);
  });
})();
