// Keeps the progress of running jobs current without reloading the page: polls live.json (the
// project's new and computing jobs); reloads once a job shown as running has ended or a new one
// started, so counts, versions and errors are rendered by the server again.
(function () {
  "use strict";
  var root = document.getElementById("dashboard");
  if (!root) { return; }
  var url = root.getAttribute("data-live-url");
  var every = parseInt(root.getAttribute("data-refresh-ms"), 10) || 1000;

  function shownLive() {
    return Array.prototype.filter.call(document.querySelectorAll("[data-job-id]"), function (el) {
      return el.getAttribute("data-live") === "1";
    });
  }

  function tick() {
    var request = new XMLHttpRequest();
    request.open("GET", url);
    request.setRequestHeader("Accept", "application/json");
    request.onload = function () {
      if (request.status === 401) { window.location.reload(); return; }
      if (request.status !== 200) { schedule(); return; }
      var live = {};
      JSON.parse(request.responseText).jobs.forEach(function (job) { live[String(job.id)] = job; });
      var changed = false;
      shownLive().forEach(function (el) {
        var job = live[el.getAttribute("data-job-id")];
        if (!job) { changed = true; return; }
        el.querySelector(".fill").style.width = job.progress + "%";
        el.querySelector(".pct").textContent = job.progress + "%";
        var row = el.closest("tr");
        var status = row && row.querySelector(".status");
        if (status && status.textContent !== job.status) {
          status.textContent = job.status;
          status.className = "status " + job.status;
        }
      });
      Object.keys(live).forEach(function (id) {
        if (!document.querySelector('[data-job-id="' + id + '"]')) { changed = true; }
      });
      if (changed) { window.location.reload(); return; }
      schedule();
    };
    request.onerror = schedule;
    request.send();
  }

  function schedule() {
    // Running jobs move every second; an idle page only looks for new jobs now and then.
    window.setTimeout(tick, shownLive().length ? every : Math.max(every, 5000));
  }

  schedule();
})();
