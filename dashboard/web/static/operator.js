// The operator's pages: the world map of live exits (jsvectormap), the network's throughput per
// minute (Chart.js), both kept current by the Server-Sent Events of /web/operator/live, and the
// order book's depth chart.
(function () {
  "use strict";
  var charts = window.IpsxCharts, css = charts.css, size = charts.size, themed = charts.themed;
  function sum(values) { return values.reduce(function (a, b) { return a + b; }, 0); }

  // The world map: countries with live exits in the accent colour, more exits more opaque.
  var mapBox = document.getElementById("exit-map");
  var map = null, counts = {};
  function colourMap() {
    if (!map) return;
    var none = css("--border"), some = css("--accent");
    var most = Math.max.apply(null, [1].concat(Object.values(counts)));
    Object.keys(map.regions).forEach(function (code) {
      var n = counts[code] || 0;
      var element = map.regions[code].element;
      element.setStyle("fill", n > 0 ? some : none);
      element.setStyle("fillOpacity", n > 0 ? 0.45 + 0.55 * Math.log(1 + n) / Math.log(1 + most) : 1);
    });
  }
  if (mapBox && typeof jsVectorMap !== "undefined") {
    counts = JSON.parse(mapBox.dataset.counts || "{}");
    map = new jsVectorMap({
      selector: "#exit-map",
      map: "world",
      zoomButtons: false,
      zoomOnScroll: false,
      regionStyle: { initial: { stroke: css("--surface"), strokeWidth: 0.5 }, hover: { fillOpacity: 0.8, cursor: "default" } },
      onRegionTooltipShow: function (event, tooltip, code) {
        var n = counts[code] || 0;
        tooltip.text(tooltip.text() + ": " + n + (n === 1 ? " exit" : " exits"));
      }
    });
    colourMap();
    document.addEventListener("ipsx-theme", colourMap);
  }

  // Throughput per minute over the last hour.
  var canvas = document.getElementById("network-chart");
  var chart = null;
  function minutes(ts) { return ts.map(function (t) { return new Date(t * 1000).toISOString().substr(11, 5); }); }
  function mega(values) { return values.map(function (b) { return b / 1e6; }); }
  if (canvas && typeof Chart !== "undefined") {
    var initial = JSON.parse(document.getElementById("throughput-data").textContent);
    chart = new Chart(canvas, {
      type: "bar",
      data: {
        labels: minutes(initial.t),
        datasets: [
          { type: "bar", label: "MB / minute", data: mega(initial.bytes), yAxisID: "y" },
          { type: "line", label: "Streams / minute", data: initial.streams, yAxisID: "y1", tension: 0.25, pointRadius: 0 }
        ]
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          y: { beginAtZero: true, position: "left", title: { display: true, text: "MB / minute" } },
          y1: { beginAtZero: true, position: "right", title: { display: true, text: "streams / minute" }, ticks: { precision: 0 }, grid: { drawOnChartArea: false } },
          x: { ticks: { maxTicksLimit: 8 } }
        }
      }
    });
    themed(chart);
  }

  var live = document.getElementById("network-live");
  var status = document.getElementById("live-status");
  if (live && (map || chart)) {
    var source = new EventSource("/web/operator/live");
    source.addEventListener("network", function (event) {
      var data = JSON.parse(event.data);
      if (chart) {
        chart.data.labels = minutes(data.throughput.t);
        chart.data.datasets[0].data = mega(data.throughput.bytes);
        chart.data.datasets[1].data = data.throughput.streams;
        chart.update();
      }
      counts = data.countries;
      if (mapBox) mapBox.dataset.counts = JSON.stringify(counts);
      colourMap();
      document.getElementById("exits-online").textContent = String(sum(Object.values(counts)));
      document.getElementById("exit-countries").textContent = String(Object.keys(counts).length);
      document.getElementById("hour-bytes").textContent = size(sum(data.throughput.bytes));
      document.getElementById("hour-streams").textContent = String(sum(data.throughput.streams));
      live.dataset.updated = String(data.at);
      status.textContent = "live, updated " + new Date(data.at * 1000).toISOString().substr(11, 8) + " UTC";
    });
    source.addEventListener("error", function () {
      status.textContent = source.readyState === EventSource.CLOSED ? "stopped: reload the page" : "reconnecting…";
    });
  }

  // The order book's depth: offers with room at each price per GB.
  var depthCanvas = document.getElementById("depth-chart");
  if (depthCanvas && typeof Chart !== "undefined") {
    var levels = JSON.parse(document.getElementById("depth-data").textContent);
    var depth = new Chart(depthCanvas, {
      type: "bar",
      data: {
        labels: levels.map(function (level) { return String(level[0] / 1e18); }),
        datasets: [{ label: "Offers with room", data: levels.map(function (level) { return level[2]; }) }]
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "offers" } },
          x: { title: { display: true, text: "IPSX per GB" } }
        }
      }
    });
    themed(depth);
  }
})();
