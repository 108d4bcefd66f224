/* Result page: while the job is queued or running, reload once its state changes. */
"use strict";

(() => {
  const card = document.getElementById("job");
  if (!card || !["queued", "running"].includes(card.dataset.state)) return;
  const source = new EventSource(card.dataset.eventsUrl);
  const check = (job) => {
    if (job.id !== card.dataset.job || job.state === card.dataset.state) return;
    source.close();
    location.reload();
  };
  source.addEventListener("snapshot", (ev) => JSON.parse(ev.data).jobs.forEach(check));
  source.addEventListener("job", (ev) => check(JSON.parse(ev.data)));
})();
