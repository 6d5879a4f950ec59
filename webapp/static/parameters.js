/* The outcome of a Save of the window's settings forms (Parameters, Monitor settings) is seen
 * where the user is.
 *
 * A Save answers its whole section (views/mailsender.py). A refusal, a conflict or a warning is
 * drawn in a box at the top of the form, which on Parameters is far above the buttons: the box
 * is brought into view and focused, so that a screen reader reads it too. A plain save says so
 * beside the buttons, which stay in view; the focus goes back to Save, where it was.
 *
 * Each field named in a box is a link; following it focuses the field.
 *
 * A save that turns training mode on or off reloads the page (HX-Refresh), for the banner at its
 * top. A reload keeps the scroll position, which would leave the banner and the "Settings saved"
 * note out of sight: the page is shown from its top instead, with the banner focused.
 */
(function () {
  "use strict";

  var SETTINGS_FORMS = "#parameters, #monitor-settings";
  var SHOW_TOP = "mailsender.showTopAfterReload";

  function show(element) {
    element.scrollIntoView({ block: "start" });
    element.focus({ preventScroll: true });
  }

  function focusField(control) {
    var field = control.closest(".field");
    if (field && field.hidden) field.hidden = false;
    // Centred, so that the sticky Action Buttons section does not cover it.
    control.scrollIntoView({ block: "center" });
    control.focus({ preventScroll: true });
  }

  document.addEventListener("htmx:afterSettle", function (event) {
    var section = event.target;
    var config = event.detail.requestConfig;
    if (!section.matches || !section.matches(SETTINGS_FORMS) || !config || config.verb !== "post") return;
    var box = section.querySelector("[data-outcome-box]");
    if (box) {
      show(box);
      return;
    }
    var save = section.querySelector("form[data-outcome] button[type=submit]");
    if (save) save.focus({ preventScroll: true });
  });

  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a[href^='#']") : null;
    if (!link || !link.closest(SETTINGS_FORMS)) return;
    var named = link.getAttribute("data-field");
    if (named) {
      var control = document.getElementById(named);
      if (!control) return;
      event.preventDefault();
      focusField(control);
    } else if (link.closest(".outcome")) {
      var box = document.getElementById(link.getAttribute("href").slice(1));
      if (!box) return;
      event.preventDefault();
      show(box);
    }
  });

  document.addEventListener("htmx:beforeOnLoad", function (event) {
    var xhr = event.detail.xhr;
    if (!xhr || xhr.getResponseHeader("HX-Refresh") !== "true") return;
    try {
      window.sessionStorage.setItem(SHOW_TOP, "yes");
    } catch (e) {
      return;
    }
    if ("scrollRestoration" in window.history) window.history.scrollRestoration = "manual";
  });

  function showTopAfterReload() {
    var wanted = null;
    try {
      wanted = window.sessionStorage.getItem(SHOW_TOP);
      window.sessionStorage.removeItem(SHOW_TOP);
    } catch (e) {
      return;
    }
    if (!wanted) return;
    window.scrollTo(0, 0);
    var banner = document.getElementById("training-banner") || document.querySelector("main .flash");
    if (banner) {
      banner.setAttribute("tabindex", "-1");
      banner.focus({ preventScroll: true });
    }
  }

  showTopAfterReload();
  // Only the reload was to start at the top; a later Back to this page finds its place again.
  window.addEventListener("pagehide", function () {
    var reloading = null;
    try {
      reloading = window.sessionStorage.getItem(SHOW_TOP);
    } catch (e) {
      reloading = null;
    }
    if (!reloading && "scrollRestoration" in window.history) window.history.scrollRestoration = "auto";
  });
})();
