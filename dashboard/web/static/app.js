// The dashboard's small behaviours: the theme toggle, copy buttons, and filling a key's secret
// into the built proxy URLs (the secret never leaves the browser).
(function () {
  "use strict";
  var root = document.documentElement;

  function currentTheme() {
    if (root.dataset.theme) return root.dataset.theme;
    return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  var toggle = document.getElementById("theme-toggle");
  if (toggle) {
    var label = function () {
      toggle.textContent = currentTheme() === "dark" ? "Light theme" : "Dark theme";
    };
    label();
    toggle.addEventListener("click", function () {
      var next = currentTheme() === "dark" ? "light" : "dark";
      root.dataset.theme = next;
      try { localStorage.setItem("ipsx-theme", next); } catch (e) { /* not kept */ }
      label();
      document.dispatchEvent(new CustomEvent("ipsx-theme"));
    });
  }

  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.dataset.copy);
      if (!source) return;
      var text = source.textContent;
      var done = function () {
        var was = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = was; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { select(source); });
      } else {
        select(source);
      }
    });
  });
  function select(element) {  // no clipboard API (plain http): select the text for Ctrl-C
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  var secret = document.getElementById("b-secret");
  if (secret) {
    secret.addEventListener("input", function () {
      document.querySelectorAll("[data-template]").forEach(function (element) {
        var value = secret.value.trim() || element.dataset.placeholder;
        element.textContent = element.dataset.template.split(element.dataset.placeholder).join(value);
      });
    });
  }
})();
