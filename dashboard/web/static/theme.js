// Runs before the page paints: applies the theme the visitor picked (else the system's).
(function () {
  try {
    var theme = localStorage.getItem("ipsx-theme");
    if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  } catch (e) { /* storage may be off: the system theme applies */ }
})();
