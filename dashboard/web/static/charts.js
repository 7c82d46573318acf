// What the pages' live charts share: theme colours from the stylesheet's variables (repainted when
// the theme changes), time labels, units, and setting a figure's text. Loaded before each page's
// own chart script.
(function () {
  "use strict";
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  window.IpsxCharts = {
    css: css,
    labels: function (seconds) {
      return seconds.map(function (t) { return new Date(t * 1000).toISOString().substr(11, 8); });
    },
    kilo: function (values) { return values.map(function (b) { return b / 1000; }); },
    size: function (bytes) {
      var units = ["B", "kB", "MB", "GB", "TB"], value = bytes, i = 0;
      while (Math.abs(value) >= 1000 && i < units.length - 1) { value /= 1000; i++; }
      return i === 0 ? value + " B" : value.toFixed(1) + " " + units[i];
    },
    set: function (id, text) { var el = document.getElementById(id); if (el) el.textContent = text; },
    // Paint a chart in the theme's two series colours now and whenever the theme changes.
    themed: function (chart) {
      function paint() {
        var fg = css("--fg"), border = css("--border");
        var colours = [css("--chart-1"), css("--chart-2")];
        chart.data.datasets.forEach(function (set, i) { set.borderColor = colours[i % 2]; set.backgroundColor = colours[i % 2]; });
        Object.values(chart.options.scales).forEach(function (scale) {
          scale.ticks.color = fg;
          scale.grid.color = border;
          if (scale.title) scale.title.color = fg;
        });
        chart.options.plugins.legend.labels.color = fg;
        chart.update();
      }
      paint();
      document.addEventListener("ipsx-theme", paint);
    }
  };
})();
