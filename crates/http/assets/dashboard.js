// Webhook Dispatcher dashboard: keeps the server-rendered #content fresh.
//
// The server renders everything; this script only re-fetches the same page
// with ?fragment=1 and swaps the HTML in. When api.tokens is set, a page
// opened by navigation arrives without data (data-locked="true"): the read
// token typed into the form is kept in sessionStorage (this tab only, gone
// when it closes) and sent as a bearer token with each fetch.
(function () {
  "use strict";

  var REFRESH_MS = 3000; // keep in step with REFRESH_SECONDS in html.rs
  var KEY = "webhook-dispatcher.read-token";

  var content = document.getElementById("content");
  if (!content) return;
  var form = document.getElementById("token-form");
  var tokenError = document.getElementById("token-error");
  var status = document.getElementById("refresh-status");
  var timer = null;
  var memoryToken = null; // where sessionStorage is refused (some private modes)

  function token() {
    try { return sessionStorage.getItem(KEY) || memoryToken; } catch (e) { return memoryToken; }
  }

  function setStatus(text, failed) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("error", !!failed);
  }

  function askForToken(message) {
    if (!form) return;
    form.hidden = false;
    if (tokenError) tokenError.textContent = message || "";
    var input = form.querySelector("input[name=token]");
    if (input) input.focus();
  }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.pathname + url.search;
  }

  // An error answer is the API's JSON: show its message.
  function failure(response) {
    return response.json().then(
      function (body) { return "HTTP " + response.status + ": " + (body.message || ""); },
      function () { return "HTTP " + response.status; }
    );
  }

  // No data without a valid token: what was shown goes, the form comes back.
  function lock(message) {
    memoryToken = null;
    try { sessionStorage.removeItem(KEY); } catch (e) { /* private mode */ }
    content.dataset.locked = "true";
    content.innerHTML = '<p class="empty">This dashboard needs a read token.</p>';
    setStatus("");
    askForToken(message);
  }

  // Fetches and swaps in the fragment; resolves to whether to keep
  // refreshing (not after a 401: that waits for a new token).
  function refresh() {
    var headers = {};
    var t = token();
    if (t) headers.Authorization = "Bearer " + t;
    return fetch(fragmentUrl(), { headers: headers, cache: "no-store", credentials: "omit" })
      .then(function (response) {
        if (response.status === 401 && form) {
          lock(t ? "That token was refused." : "");
          return false;
        }
        if (!response.ok) {
          return failure(response).then(function (text) { setStatus(text, true); return true; });
        }
        return response.text().then(function (html) {
          content.innerHTML = html;
          content.dataset.locked = "false";
          if (form) form.hidden = true;
          setStatus("updated " + new Date().toLocaleTimeString());
          return true;
        });
      })
      .catch(function (e) { setStatus("refresh failed: " + e.message, true); return true; });
  }

  function cycle() {
    clearTimeout(timer);
    refresh().then(function (again) { if (again) schedule(); });
  }

  // One refresh at a time, the next one REFRESH_MS after the last ended;
  // none while the tab is hidden (no load from forgotten tabs).
  function schedule() {
    clearTimeout(timer);
    if (document.hidden) return;
    timer = setTimeout(cycle, REFRESH_MS);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      clearTimeout(timer);
    } else if (content.dataset.locked !== "true" || token()) {
      cycle();
    }
  });

  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var value = form.elements.token.value.trim();
      if (!value) return;
      memoryToken = value;
      try { sessionStorage.setItem(KEY, value); } catch (e) { /* private mode */ }
      form.elements.token.value = "";
      cycle();
    });
  }

  if (content.dataset.locked === "true") {
    if (token()) cycle();
    else askForToken("");
  } else {
    schedule();
  }
})();
