// Live parts of the dashboard: an element with data-live-fragment (a URL of the same origin answering a fresh
// copy of that element) and data-live-stream (a Server-Sent Events URL) is replaced by its fresh copy when
// events arrive, without reloading the page, until its fresh copy says data-live-active="false". Nothing is
// fetched on a timer: the stream carries each change of the job and of its tasks (deployment.tasks_progressed),
// and a burst of events costs at most one fetch in flight and one after it. Without script the page keeps its
// <noscript> refresh, so nothing here is needed to see the same information.
(function () {
  "use strict";

  var EVENT_TYPES = [
    "org.stellaops.deployment.job_started",
    "org.stellaops.deployment.tasks_progressed",
    "org.stellaops.deployment.job_completed",
    "org.stellaops.promotion.started",
    "org.stellaops.promotion.completed",
    "org.stellaops.promotion.failed",
    "org.stellaops.promotion.rolled_back",
    "org.stellaops.promotion.approved",
  ];

  function start(element) {
    var id = element.id;
    var fragmentUrl = element.getAttribute("data-live-fragment");
    var streamUrl = element.getAttribute("data-live-stream");
    var note = document.getElementById(id + "-note");
    var source = null;
    var busy = false; // a fetch is in flight
    var again = false; // events arrived while it was: one more fetch follows it, however many they were
    var ended = false;

    function say(text) {
      if (note) {
        note.textContent = text;
      }
    }

    function stop(text) {
      ended = true;
      if (source) {
        source.close();
        source = null;
      }
      say(text);
    }

    function refresh() {
      if (ended) {
        return;
      }
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      window
        .fetch(fragmentUrl, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("status " + response.status);
          }
          return response.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
          if (!fresh) {
            return;
          }
          var current = document.getElementById(id);
          if (current) {
            current.replaceWith(document.importNode(fresh, true));
          }
          document.body.setAttribute("data-live-updates", String(Number(document.body.getAttribute("data-live-updates") || "0") + 1));
          if (fresh.getAttribute("data-live-active") !== "true") {
            stop("Live updates ended: the deployment is over.");
          }
        })
        .catch(function () {
          say("Live updates paused: reload the page to see the latest state.");
        })
        .finally(function () {
          busy = false;
          if (again) {
            again = false;
            refresh();
          }
        });
    }

    if (!window.EventSource || !window.fetch || !fragmentUrl || !streamUrl) {
      return;
    }
    if (element.getAttribute("data-live-active") !== "true") {
      return;
    }
    source = new EventSource(streamUrl);
    source.onopen = function () {
      say("Live: this view follows the deployment as it happens.");
      refresh(); // what happened between the page's load (or a lost connection) and the stream's start
    };
    source.onerror = function () {
      if (!ended) {
        say("Reconnecting to the live event stream...");
      }
    };
    EVENT_TYPES.forEach(function (type) {
      source.addEventListener(type, refresh);
    });
  }

  document.querySelectorAll("[data-live-fragment][data-live-stream]").forEach(start);
})();
