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
 * data-endpoints, which the server renders from scheduler/oauth.py PROVIDER_ENDPOINTS). */
(function () {
  "use strict";

  document.addEventListener("change", function (event) {
    var select = event.target;
    if (!select.matches || !select.matches("select[data-endpoints]") || !select.form) return;
    var endpoints = JSON.parse(select.getAttribute("data-endpoints"))[select.value];
    if (!endpoints) return;
    Object.keys(endpoints).forEach(function (name) {
      var input = select.form.elements.namedItem(name);
      if (input) input.value = endpoints[name];
    });
  });
})();
