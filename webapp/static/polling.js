/* Polled sections (an element whose hx-trigger has "every") without fighting the user.
 *
 * They are swapped by morphing (hx-swap="morph:outerHTML", htmx's idiomorph extension), which
 * keeps the element that has focus. A <details> keeps what the user made of it: the server
 * never knows which one is open, so its answer would close them all.
 *
 * While the tab is hidden their polls are dropped before they leave; when it is shown again
 * each polled section is asked at once ("page-shown" in its hx-trigger). htmx's own trigger
 * filters would need eval, which the Content-Security-Policy forbids.
 */
(function () {
  "use strict";

  var POLLED = '[hx-trigger~="every"]';

  if (window.Idiomorph) {
    window.Idiomorph.defaults.callbacks.beforeAttributeUpdated = function (name, element) {
      return !(name === "open" && element.tagName === "DETAILS");
    };
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (document.hidden && element.matches && element.matches(POLLED)) event.preventDefault();
  });

  document.addEventListener("visibilitychange", function () {
    if (document.hidden || !window.htmx) return;
    document.querySelectorAll(POLLED).forEach(function (element) {
      window.htmx.trigger(element, "page-shown");
    });
  });
})();
