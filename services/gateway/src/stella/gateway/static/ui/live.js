// Live parts of the dashboard: an element with data-live-fragment (a URL of the same origin answering a fresh
// copy of that element) and data-live-stream (a Server-Sent Events URL) is replaced by its fresh copy whenever an
// event arrives, without reloading the page, until its fresh copy says data-live-active="false". While it says
// data-live-poll="true" (a job is running) it is also fetched every few seconds, since a job's tasks progress
// between the job events the public stream carries. Without script the page keeps its <noscript> refresh, so
// nothing here is needed to see the same information.
(function () {
  "use strict";

  var PERIOD_MS = 2000;

  function start(element) {
    var id = element.id;
    var fragmentUrl = element.getAttribute("data-live-fragment");
    var streamUrl = element.getAttribute("data-live-stream");
    var note = document.getElementById(id + "-note");
    var source = null;
    var timer = null;
    var busy = false;
    var again = false;

    function say(text) {
      if (note) {
        note.textContent = text;
      }
    }

    function stop(text) {
      if (source) {
        source.close();
        source = null;
      }
      if (timer) {
        window.clearInterval(timer);
        timer = null;
      }
      say(text);
    }

    function refresh() {
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
          follow(fresh);
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

    function follow(current) {
      if (current.getAttribute("data-live-active") !== "true") {
        stop("Live updates ended: the deployment is over.");
      } else if (current.getAttribute("data-live-poll") === "true") {
        if (!timer) {
          timer = window.setInterval(refresh, PERIOD_MS);
        }
      } else if (timer) {
        window.clearInterval(timer);
        timer = null;
      }
    }

    if (!window.EventSource || !window.fetch || !fragmentUrl || !streamUrl) {
      return;
    }
    source = new EventSource(streamUrl);
    source.onopen = function () {
      say("Live: this view follows the deployment as it happens.");
      refresh(); // what happened between the page's load and the stream's start
    };
    source.onerror = function () {
      say("Reconnecting to the live event stream...");
    };
    [
      "org.stellaops.deployment.job_started",
      "org.stellaops.deployment.job_completed",
      "org.stellaops.promotion.started",
      "org.stellaops.promotion.completed",
      "org.stellaops.promotion.failed",
      "org.stellaops.promotion.rolled_back",
      "org.stellaops.promotion.approved",
    ].forEach(function (type) {
      source.addEventListener(type, refresh);
    });
    follow(element);
  }

  document.querySelectorAll("[data-live-fragment][data-live-stream]").forEach(start);
})();
