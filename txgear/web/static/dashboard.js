// txgear dashboard: polls the JSON API and draws the page. No framework, no
// build step. Every string that comes from the server (function names,
// client ids, handles, errors) is written with textContent, never as markup.
"use strict";

(function () {
  var POLL_MS = 2000;          // one update every 2 s at most
  var WINDOW_S = 300;          // the charts show the last 5 minutes
  var RATE_S = 60;             // jobs/s and failure rate: over the last minute
  var ACTION_HEADERS = {"X-Txgear-Request": "dashboard"};  // see txgear/web/_csrf.py
  var FAILED = ["fail", "exception", "timeout", "lost", "retried"];  // failed attempts
  var SVG = "http://www.w3.org/2000/svg";

  var samples = [];  // {t, submitted, complete, failed}: the server's totals over time

  function $(id) { return document.getElementById(id); }

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) { td.className = className; }
    return td;
  }

  function row(cells, className) {
    var tr = document.createElement("tr");
    cells.forEach(function (td) { tr.appendChild(td); });
    if (className) { tr.className = className; }
    return tr;
  }

  function fill(tableId, rows, emptyId) {
    var body = $(tableId).tBodies[0];
    body.replaceChildren.apply(body, rows);
    if (emptyId) { $(emptyId).hidden = rows.length > 0; }
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) { return ""; }
    var s = Math.floor(seconds);
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " m " + (s % 60) + " s"; }
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " m";
  }

  function clockTime(epochSeconds) {
    return new Date(epochSeconds * 1000).toLocaleTimeString();
  }

  function rate(value) {
    if (value === null) { return "–"; }
    return value >= 10 ? value.toFixed(0) : value.toFixed(1);
  }

  function sum(counts, names) {
    var total = 0;
    if (!counts) { return 0; }
    names.forEach(function (name) { total += counts[name] || 0; });
    return total;
  }

  function getJSON(path) {
    return fetch(path, {cache: "no-store", credentials: "same-origin",
                        headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error(path + ": HTTP " + response.status); }
        return response.json();
      });
  }

  // -- counters and charts ------------------------------------------------

  function record(stats) {
    var totals = stats.totals;
    var sample = {
      t: stats.time,
      submitted: totals.submitted.foreground + totals.submitted.background,
      complete: totals.finished.complete || 0,
      failed: sum(totals.finished, FAILED)
    };
    var last = samples[samples.length - 1];
    if (last && (sample.complete < last.complete || sample.t <= last.t)) {
      samples = [];  // the server restarted, or the same answer twice
    }
    samples.push(sample);
    while (samples.length > 2 && samples[0].t < sample.t - WINDOW_S - POLL_MS / 1000) {
      samples.shift();
    }
  }

  function rates(key) {
    var points = [];
    for (var i = 1; i < samples.length; i++) {
      var dt = samples[i].t - samples[i - 1].t;
      points.push({t: samples[i].t, v: dt > 0 ? (samples[i][key] - samples[i - 1][key]) / dt : 0});
    }
    return points;
  }

  function overLastMinute(key) {
    if (samples.length < 2) { return null; }
    var last = samples[samples.length - 1];
    var first = samples[0];
    for (var i = samples.length - 2; i >= 0; i--) {
      first = samples[i];
      if (samples[i].t <= last.t - RATE_S) { break; }
    }
    var dt = last.t - first.t;
    return dt > 0 ? {delta: last[key] - first[key], dt: dt} : null;
  }

  function svgElement(name, attributes) {
    var element = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (key) { element.setAttribute(key, attributes[key]); });
    return element;
  }

  function drawChart(svgId, peakId, series) {
    var svg = $(svgId);
    var width = 300, height = 80;
    var end = samples.length ? samples[samples.length - 1].t : 0;
    // The x axis spans the history kept (20 s at least, the window at most).
    var span = samples.length ? Math.min(WINDOW_S, Math.max(20, end - samples[0].t)) : WINDOW_S;
    var peak = 0;
    series.forEach(function (s) { s.points.forEach(function (p) { peak = Math.max(peak, p.v); }); });
    var top = peak > 0 ? peak * 1.1 : 1;
    var children = [0.5, 1].map(function (f) {
      var y = (height - f * height / 1.1).toFixed(1);
      return svgElement("line", {"class": "grid", x1: 0, x2: width, y1: y, y2: y});
    });
    series.forEach(function (s) {
      var points = s.points.map(function (p) {
        var x = width - (end - p.t) * width / span;
        var y = height - p.v * height / top;
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      if (points.length) {
        children.push(svgElement("polyline", {"class": "series " + s.name, points: points.join(" ")}));
      }
    });
    svg.replaceChildren.apply(svg, children);
    $(peakId).textContent = "peak " + rate(peak) + "/s";
  }

  // -- sections -----------------------------------------------------------

  function renderStats(stats) {
    record(stats);
    var queued = 0, running = 0;
    var rows = stats.functions.map(function (f) {
      var q = f.queued.high + f.queued.normal + f.queued.low;
      queued += q;
      running += f.running;
      var className = [];
      if (f.oldest_age !== null && f.oldest_age > 60) { className.push("stale"); }
      if (q > 0 && f.workers === 0) { className.push("noworkers"); }
      return row([
        cell(f.name, "name"),
        cell(f.queued.high, "n"), cell(f.queued.normal, "n"), cell(f.queued.low, "n"),
        cell(f.running, "n"), cell(f.workers, "n workers"), cell(f.scheduled, "n"),
        cell(age(f.oldest_age), "n age"),
        cell(f.finished ? f.finished.complete : 0, "n"),
        cell(sum(f.finished, ["fail", "exception", "timeout", "lost"]), "n")
      ], className.join(" "));
    });
    fill("functions", rows, "functions-empty");
    $("sum-functions").textContent = String(stats.functions.length);
    $("sum-queued").textContent = String(queued);
    $("sum-running").textContent = String(running);
    $("sum-complete").textContent = String(stats.totals.finished.complete || 0);
    var completed = overLastMinute("complete");
    var failed = overLastMinute("failed");
    $("sum-rate").textContent = completed ? rate(completed.delta / completed.dt) : "–";
    var ended = completed && failed ? completed.delta + failed.delta : 0;
    $("sum-failrate").textContent = ended > 0 ? (100 * failed.delta / ended).toFixed(1) + " %" : "–";
    drawChart("chart-throughput", "chart-throughput-peak",
              [{name: "submitted", points: rates("submitted")},
               {name: "complete", points: rates("complete")}]);
    drawChart("chart-failures", "chart-failures-peak", [{name: "failed", points: rates("failed")}]);
  }

  function renderWorkers(workers) {
    fill("workers", workers.items.map(function (w) {
      return row([cell(w.id, "n"), cell(w.address), cell(w.client_id, "name"),
                  cell(w.functions.join(", "), "name")]);
    }), "workers-empty");
  }

  function renderFailures(failures) {
    fill("failures", failures.items.map(function (f) {
      return row([cell(clockTime(f.time)), cell(f.function, "name"), cell(f.handle, "name"),
                  cell(f.outcome + (f.final ? "" : " (retried)"),
                       "outcome " + (f.final ? "final" : "retried")),
                  cell(f.error.length > 200 ? f.error.slice(0, 200) + "…" : f.error, "error")]);
    }), "failures-empty");
  }

  // -- DEAD SET -------------------------------------------------------------
  // Background jobs that failed for good: /v1/stats gives their count, GET
  // /v1/dead the newest of them; "Retry" posts their handles (or nothing: all)
  // to /v1/dead/retry.

  var DEAD_SHOWN = 10;         // the newest dead jobs listed

  function renderDead(dead) {
    var section = $("dead");
    if (!dead) { section.hidden = true; return Promise.resolve(); }
    section.hidden = false;
    $("dead-count").textContent = "(" + dead.count + ")";
    $("dead-retry-all").disabled = dead.count === 0;
    if (dead.count === 0) {
      fill("dead-jobs", [], "dead-empty");
      $("dead-more").textContent = "";
      return Promise.resolve();
    }
    return getJSON("/v1/dead?limit=" + DEAD_SHOWN).then(function (listing) {
      fill("dead-jobs", listing.items.map(function (job) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "small dead-retry";
        button.textContent = "Retry";
        button.addEventListener("click", function () { retryDead([job.handle]); });
        var action = cell("");
        action.appendChild(button);
        return row([cell(clockTime(job.died_at)), cell(job.function, "name"),
                    cell(job.handle, "name handle"), cell(job.attempts, "n"),
                    cell(job.error.length > 200 ? job.error.slice(0, 200) + "…" : job.error,
                         "error"),
                    action]);
      }), "dead-empty");
      $("dead-more").textContent = dead.count > listing.items.length ?
        "the newest " + listing.items.length + " of " + dead.count + " shown" : "";
    });
  }

  function retried(answer) {
    var words = ["retried " + answer.retried];
    if (answer.stayed) { words.push(answer.stayed + " stay dead (a live job has their unique)"); }
    if (answer.unknown) { words.push(answer.unknown + " no longer dead"); }
    return words.join(", ");
  }

  function retryDead(handles) {
    var result = $("dead-result");
    var headers = {"Content-Type": "application/json"};
    Object.keys(ACTION_HEADERS).forEach(function (k) { headers[k] = ACTION_HEADERS[k]; });
    result.textContent = "retrying…";
    fetch("/v1/dead/retry", {method: "POST", credentials: "same-origin", headers: headers,
                             body: JSON.stringify(handles ? {handles: handles} : {})})
      .then(function (response) {
        if (!response.ok) { throw new Error("refused: HTTP " + response.status); }
        return response.json();
      })
      .then(function (answer) {
        result.textContent = retried(answer);
        // Show the dead set as it is now, without waiting for the next poll.
        return getJSON("/v1/stats").then(function (stats) { return renderDead(stats.dead); });
      })
      .catch(function (e) { result.textContent = "retry failed: " + e.message; });
  }

  // -- actions ------------------------------------------------------------

  function cancelJob(event) {
    event.preventDefault();
    var handle = $("cancel-handle").value.trim();
    var result = $("cancel-result");
    if (!handle) { return; }
    result.textContent = "cancelling…";
    fetch("/v1/jobs/" + encodeURIComponent(handle),
          {method: "DELETE", credentials: "same-origin", headers: ACTION_HEADERS})
      .then(function (response) {
        if (response.ok) {
          result.textContent = "cancelled " + handle;
          $("cancel-handle").value = "";
        } else if (response.status === 404) {
          result.textContent = "no such job: " + handle;
        } else {
          result.textContent = "refused: HTTP " + response.status;
        }
      }, function (e) { result.textContent = "failed: " + e.message; });
  }

  // -- polling ------------------------------------------------------------

  function setConnection(ok, message) {
    var badge = $("connection");
    badge.textContent = ok ? "live" : "disconnected";
    badge.className = "badge " + (ok ? "ok" : "bad");
    $("updated").textContent = message;
  }

  function poll() {
    var started = Date.now();
    Promise.all([getJSON("/v1/stats"), getJSON("/v1/workers?limit=100"),
                 getJSON("/v1/failures?limit=10")])
      .then(function (answers) {
        renderStats(answers[0]);
        renderWorkers(answers[1]);
        renderFailures(answers[2]);
        return renderDead(answers[0].dead);
      })
      .then(function () { setConnection(true, "updated " + new Date().toLocaleTimeString()); },
            function (e) { setConnection(false, e.message); })
      .then(function () {
        setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("cancel-form").addEventListener("submit", cancelJob);
    $("dead-retry-all").addEventListener("click", function () { retryDead(null); });
    poll();
  });
}());
