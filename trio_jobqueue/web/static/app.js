// trio-jobqueue dashboard: keeps the page live (server-sent events), submits the action
// forms without a reload. No framework; nothing here builds HTML from data (textContent
// only), the fragments swapped in are the server's own escaped HTML.
(function () {
  "use strict";
  var main = document.getElementById("live");
  var dot = document.getElementById("live-state");
  var flash = document.getElementById("flash");
  var events = document.getElementById("events");
  if (!main) { return; }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  var busy = false, again = false, last = 0;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    last = Date.now();
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { main.innerHTML = html; } })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 250); }
      });
  }
  function soon() {
    var wait = Math.max(0, 500 - (Date.now() - last));
    setTimeout(refresh, wait);
  }

  function say(text, ok) {
    if (!flash) { return; }
    flash.textContent = text;
    flash.className = ok ? "ok" : "bad";
    flash.hidden = false;
  }

  var source = main.getAttribute("data-events");
  if (source && window.EventSource) {
    var es = new EventSource(source);
    es.addEventListener("open", function () { dot.className = "live on"; });
    es.addEventListener("error", function () { dot.className = "live off"; });
    es.addEventListener("change", soon);
    es.addEventListener("job", function (e) {
      if (!events) { return; }
      var data = JSON.parse(e.data);
      var li = document.createElement("li");
      var text = new Date().toLocaleTimeString() + "  " + data.kind + " (attempt " + data.attempt + ")";
      if (data.error) { text += ": " + data.error; }
      li.textContent = text;
      li.className = "ev-" + data.kind;
      events.insertBefore(li, events.firstChild);
      soon();
    });
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.classList || !form.classList.contains("action")) { return; }
    e.preventDefault();
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { return; }
    var button = form.querySelector("button");
    if (button) { button.disabled = true; }
    fetch(form.getAttribute("action"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(new FormData(form)).toString()
    })
      .then(function (r) { return r.json(); })
      .then(function (answer) {
        say(answer.message, answer.ok);
        var gone = ["deleted", "cancelled", "cancelling", "not_found"];
        if (events && gone.indexOf(answer.status) >= 0) {
          // The job is no more: back to its queue.
          window.location.href = document.querySelector(".crumbs a").href;
          return;
        }
        refresh();
      })
      .catch(function () { say("The request failed.", false); })
      .then(function () { if (button) { button.disabled = false; } });
  });
})();
