/* A session that ended while a page was open (templates/auth/_session_ended.html).
 *
 * A login in place starts a new session, whose CSRF token the page's forms do not hold yet: the
 * confirmation carries it (data-csrf-token), and it replaces the old one in every form and in
 * htmx's request headers, so that the action pressed again is accepted.
 */
(function () {
  "use strict";

  document.addEventListener("htmx:afterSettle", function () {
    var carrier = document.querySelector("[data-csrf-token]");
    if (!carrier) return;
    var token = carrier.getAttribute("data-csrf-token");
    carrier.removeAttribute("data-csrf-token");
    document.querySelectorAll("input[name='csrf_token']").forEach(function (input) {
      input.value = token;
    });
    var headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
    headers["X-CSRFToken"] = token;
    document.body.setAttribute("hx-headers", JSON.stringify(headers));
  });

  // The polls go on finding the session ended: the notice already shown is not drawn again
  // (which a screen reader would announce again each time).
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (event.detail.xhr.status === 401 && target && target.id === "session-notice" &&
        target.querySelector("[data-session-ended]")) {
      event.detail.shouldSwap = false;
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-dismiss]") : null;
    if (!button) return;
    var area = document.querySelector(button.getAttribute("data-dismiss"));
    if (area) area.replaceChildren();
  });
})();
