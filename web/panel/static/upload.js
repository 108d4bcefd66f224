/* Upload page: drop or pick files, one XHR per file (real progress bars, per-file rejection),
   and the live queue fed by Server-Sent Events. */
"use strict";

(() => {
  const form = document.getElementById("upload-form");
  const task = document.getElementById("task");
  const drop = document.getElementById("dropzone");
  const picker = document.getElementById("files");
  const list = document.getElementById("uploads");
  const formError = document.getElementById("form-error");
  const queue = document.getElementById("queue");
  const tbody = queue.querySelector("tbody");
  const empty = document.getElementById("queue-empty");
  const live = document.getElementById("live-status");
  const PARALLEL = 3;

  /* ---- task presets: show the fields each one needs ---- */
  function syncTaskFields() {
    form.querySelectorAll("[data-for]").forEach((n) => { n.hidden = n.dataset.for !== task.value; });
    form.querySelectorAll("[data-not-for]").forEach((n) => { n.hidden = n.dataset.notFor === task.value; });
  }
  task.addEventListener("change", syncTaskFields);
  syncTaskFields();

  const splitList = (value) => value.split(",").map((s) => s.trim()).filter(Boolean);

  /* The options as the server wants them, or an error message the user can act on. */
  function options() {
    const t = task.value;
    const opts = {
      task: t,
      language: form.language.value,
      summarize: form.summarize.checked ? "1" : "",
      prompt: t === "question" ? form.question.value.trim() : form.prompt.value.trim(),
      labels: t === "classify" ? splitList(form.labels.value).join(",") : "",
      fields: t === "extract" ? splitList(form.fields.value).join(",") : "",
    };
    if (t === "question" && !opts.prompt) return { error: "Type the question first." };
    if (t === "classify" && splitList(opts.labels).length < 2) return { error: "Give at least two labels." };
    if (t === "extract" && !opts.fields) return { error: "Name at least one field to extract." };
    return { opts };
  }

  /* ---- uploads ---- */
  const pending = [];
  let running = 0;

  function addFiles(files) {
    files = Array.from(files || []);
    if (!files.length) return;
    const { opts, error } = options();
    formError.hidden = !error;
    formError.textContent = error || "";
    if (error) return;
    // Files dropped together form a batch (one digest for all of them).
    const batch = { id: files.length > 1 ? Panel.randomId() : "", left: files.length };
    for (const file of files) {
      const bar = Panel.el("progress", { max: "100", value: "0", "aria-label": "Upload of " + file.name });
      const status = Panel.el("span", { class: "status", text: "waiting…" });
      const row = Panel.el("li", { "data-name": file.name },
        Panel.el("span", { class: "name", title: file.name, text: file.name }), bar, status);
      list.prepend(row);
      pending.push({ file, opts, batch, bar, status, row, key: Panel.randomId() });
    }
    pump();
  }

  function pump() {
    while (running < PARALLEL && pending.length) {
      running++;
      const item = pending.shift();
      send(item).finally(() => {
        running--;
        item.batch.left--;
        // Every file of the drop was sent (or refused): the server may write the digest.
        if (item.batch.id && item.batch.left === 0) {
          const data = new FormData();
          data.append("batch", item.batch.id);
          Panel.post(form.dataset.closeUrl, data);
        }
        pump();
      });
    }
  }

  function send(item) {
    return new Promise((resolve) => {
      const data = new FormData();
      for (const [k, v] of Object.entries(item.opts)) data.append(k, v);
      data.append("batch", item.batch.id);
      data.append("key", item.key);
      data.append("file", item.file, item.file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.uploadUrl);
      xhr.setRequestHeader("X-CSRFToken", Panel.csrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (ev) => {
        if (ev.lengthComputable) {
          item.bar.value = Math.round((ev.loaded / ev.total) * 100);
          item.status.textContent = "uploading… " + item.bar.value + "%";
        }
      };
      xhr.onload = () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = {}; }
        item.bar.value = 100;
        if (xhr.status >= 200 && xhr.status < 300 && body.job) {
          item.row.classList.add("accepted");
          item.status.className = "status ok";
          item.status.textContent = "accepted: in the queue";
          upsert(body.job);
        } else {
          item.row.classList.add("rejected");
          item.status.className = "status error";
          item.status.setAttribute("role", "alert");
          item.status.textContent = "Rejected: " + (body.detail || xhr.statusText || "upload failed");
        }
        resolve();
      };
      xhr.onerror = () => {
        item.row.classList.add("rejected");
        item.status.className = "status error";
        item.status.textContent = "Upload failed: the connection broke. Try again.";
        resolve();
      };
      item.status.textContent = "uploading…";
      xhr.send(data);
    });
  }

  picker.addEventListener("change", () => { addFiles(picker.files); picker.value = ""; });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); addFiles(ev.dataTransfer.files); });
  // A file dropped beside the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());

  /* ---- live queue ---- */
  const jobs = new Map(); // id -> {job, row, receivedAt}

  function actionButton(job) {
    if (job.can_cancel) {
      return Panel.el("button", { class: "small", type: "button", "data-action": "cancel",
        "data-url": job.cancel_url, text: "Cancel", "aria-label": "Cancel " + job.filename });
    }
    if (job.can_retry) {
      return Panel.el("button", { class: "small", type: "button", "data-action": "retry",
        "data-url": job.retry_url, text: "Retry", "aria-label": "Retry " + job.filename });
    }
    return null;
  }

  function elapsed(entry) {
    const j = entry.job;
    if (j.elapsed === null || j.elapsed === undefined) return "";
    const extra = j.state === "running" ? (Date.now() - entry.receivedAt) / 1000 : 0;
    return Panel.duration(j.elapsed + extra);
  }

  function render(entry) {
    const j = entry.job;
    const state = Panel.el("span", { class: "state state-" + j.state, text: j.state });
    if (j.error) state.title = j.error;
    // data-label: the column's name, shown beside the value when a narrow card stacks the row.
    const cells = [
      Panel.el("td", { class: "fname c-file" }, Panel.el("a", { href: j.url, title: j.filename, text: j.filename })),
      Panel.el("td", { class: "c-task", "data-label": "Task", text: j.task }),
      Panel.el("td", { class: "c-state", "data-label": "State" }, state,
        j.error ? Panel.el("div", { class: "hint error", text: j.error }) : null),
      Panel.el("td", { class: "num c-pos", "data-label": "Pos.", text: j.position ? String(j.position) : "" }),
      Panel.el("td", { class: "c-worker", "data-label": "Worker", title: j.worker || "", text: j.worker || "" }),
      Panel.el("td", { class: "num elapsed c-time", "data-label": "Time", text: elapsed(entry) }),
      Panel.el("td", { class: "c-act" }, actionButton(j)),
    ];
    entry.row.replaceChildren(...cells);
    entry.row.dataset.state = j.state;
  }

  function upsert(job) {
    let entry = jobs.get(job.id);
    if (!entry) {
      entry = { row: Panel.el("tr", { "data-job": job.id }) };
      jobs.set(job.id, entry);
      tbody.prepend(entry.row);
    }
    entry.job = job;
    entry.receivedAt = Date.now();
    render(entry);
    empty.hidden = jobs.size > 0;
  }

  function snapshot(list) {
    // Oldest first so that prepending leaves the newest on top.
    for (const job of list.slice().reverse()) upsert(job);
  }

  setInterval(() => {
    for (const entry of jobs.values()) {
      if (entry.job.state === "running") entry.row.querySelector(".elapsed").textContent = elapsed(entry);
    }
  }, 1000);

  function connect() {
    const source = new EventSource(queue.dataset.eventsUrl);
    source.addEventListener("snapshot", (ev) => snapshot(JSON.parse(ev.data).jobs));
    source.addEventListener("job", (ev) => upsert(JSON.parse(ev.data)));
    source.onopen = () => { live.textContent = "Live"; live.className = "hint ok"; };
    // EventSource reconnects by itself (the server ends each stream after a while).
    source.onerror = () => { live.textContent = "Reconnecting…"; live.className = "hint"; };
  }
  connect();
})();
