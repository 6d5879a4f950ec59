/* Shows the Mail Sender parameters that matter under the toggles that are on.
 *
 * Each field wrapper says when it matters in data-show-if, the same rule the server uses for
 * the first render (webapp/core/settings/fields.py show_if_holds): "a|b" means a or b is ticked;
 * "a&g=x,y" means a is ticked and the select g is x or y. Hidden fields are still submitted,
 * so switching a toggle off loses nothing that was typed.
 */
(function () {
  "use strict";

  function valueOf(form, name) {
    var control = form.elements.namedItem(name);
    if (!control) return "";
    if (control.type === "checkbox") return control.checked ? "on" : "";
    return control.value;
  }

  function holds(form, rule) {
    return rule.split("|").some(function (alternative) {
      return alternative.split("&").every(function (term) {
        var parts = term.split("=");
        var value = valueOf(form, parts[0]);
        return parts.length === 1 ? value === "on" : parts[1].split(",").indexOf(value) !== -1;
      });
    });
  }

  function apply(form) {
    form.querySelectorAll("[data-show-if]").forEach(function (field) {
      field.hidden = !holds(form, field.getAttribute("data-show-if"));
    });
  }

  document.addEventListener("change", function (event) {
    var form = event.target.closest ? event.target.closest("form[data-toggles]") : null;
    if (form) apply(form);
  });
})();

/* Choosing an OAuth2 provider fills in its Authorization and Token URLs (from the select's
 * data-endpoints, which the server renders from scheduler/oauth.py PROVIDER_ENDPOINTS). A URL is
 * replaced only while it is empty or holds a provider's default: one the administrator typed (a
 * tenant of their own) stays. A provider without defaults (Other) clears the known ones. */
(function () {
  "use strict";

  document.addEventListener("change", function (event) {
    var select = event.target;
    if (!select.matches || !select.matches("select[data-endpoints]") || !select.form) return;
    var endpoints = JSON.parse(select.getAttribute("data-endpoints"));
    var providers = Object.keys(endpoints);
    var chosen = endpoints[select.value] || {};
    var names = {};
    providers.forEach(function (provider) {
      Object.keys(endpoints[provider]).forEach(function (name) { names[name] = true; });
    });
    Object.keys(names).forEach(function (name) {
      var input = select.form.elements.namedItem(name);
      if (!input) return;
      var current = input.value.trim();
      var isDefault = current === "" || providers.some(function (provider) {
        return endpoints[provider][name] === current;
      });
      if (isDefault) input.value = chosen[name] || "";
    });
  });
})();

/* The Test button: the moment it is pressed, the Test section drops the last result and says
 * that a run goes on, with the seconds so far, until the server's answer replaces the section.
 * If no answer comes (the window's server is away), the section says so. */
(function () {
  "use strict";

  var ticker = null;

  function isTest(event) {
    var elt = event.detail && event.detail.elt;
    return Boolean(elt && elt.matches && elt.matches("[data-smtp-test]"));
  }

  function ticked(form, name) {
    var box = form && form.elements.namedItem(name);
    return Boolean(box && box.checked);
  }

  // The stages this run goes through, from the boxes ticked in the form: a run names only what it tries.
  function stagesOf(form) {
    var stages = [];
    if (ticked(form, "smtp_ssl")) stages.push("TLS from the first byte");
    else if (ticked(form, "smtp_starttls")) stages.push("STARTTLS");
    stages.push("EHLO");
    if (ticked(form, "oauth2_enabled")) stages.push("AUTH with an OAuth2 token");
    else if (ticked(form, "smtp_auth")) stages.push("AUTH");
    return stages.join(", ") + ", MAIL FROM, RCPT TO and RSET";
  }

  function show(templateId) {
    var section = document.getElementById("smtp-test");
    var body = section && section.querySelector("#smtp-test-body");
    var template = section && section.querySelector("template#" + templateId);
    if (!body || !template) return null;
    body.replaceChildren(template.content.cloneNode(true));
    return body;
  }

  function stop() {
    if (ticker !== null) clearInterval(ticker);
    ticker = null;
    var section = document.getElementById("smtp-test");
    if (section) section.removeAttribute("aria-busy");
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    if (!isTest(event)) return;
    var form = event.detail.elt.form;
    var body = show("smtp-test-progress");
    if (!body) return;
    var host = form && form.elements.namedItem("smtp_host");
    var port = form && form.elements.namedItem("smtp_port");
    body.querySelector("[data-server]").textContent =
      (host ? host.value.trim() : "") + " port " + (port ? port.value.trim() : "");
    body.querySelector("[data-stages]").textContent = stagesOf(form);
    var section = document.getElementById("smtp-test");
    section.setAttribute("aria-busy", "true");
    section.scrollIntoView({ block: "nearest" });
    var started = Date.now();
    stop();
    section.setAttribute("aria-busy", "true");
    ticker = setInterval(function () {
      var elapsed = document.querySelector("#smtp-test-running [data-elapsed]");
      if (!elapsed) { stop(); return; }
      elapsed.textContent = String(Math.round((Date.now() - started) / 1000));
    }, 1000);
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    if (isTest(event)) stop();
  });

  function lost(why) {
    return function (event) {
      if (!isTest(event)) return;
      stop();
      var body = show("smtp-test-lost");
      if (body) body.querySelector("[data-why]").textContent = why(event);
    };
  }

  document.addEventListener("htmx:sendError", lost(function () { return "no connection"; }));
  document.addEventListener("htmx:timeout", lost(function () { return "no answer in time"; }));
  document.addEventListener("htmx:responseError", lost(function (event) {
    return "it answered HTTP " + event.detail.xhr.status;
  }));
})();
