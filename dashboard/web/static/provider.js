// The provider's live chart and figures: Chart.js fed by the Server-Sent Events of
// /web/provider/live (the traffic the provider's exits served, today's totals and earnings).
(function () {
  "use strict";
  var canvas = document.getElementById("provider-chart");
  var live = document.getElementById("provider-live");
  var status = document.getElementById("live-status");
  if (!canvas || !live || typeof Chart === "undefined" || !window.IpsxCharts) return;

  var initial = JSON.parse(document.getElementById("series-data").textContent);
  var charts = window.IpsxCharts, labels = charts.labels, kilo = charts.kilo;

  var chart = new Chart(canvas, {
    type: "line",
    data: {
      labels: labels(initial.t),
      datasets: [
        { label: "kB / s served", data: kilo(initial.bytes), yAxisID: "y", tension: 0.25, pointRadius: 0 },
        { label: "Streams / s", data: initial.requests, yAxisID: "y1", tension: 0.25, pointRadius: 0 }
      ]
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        y: { beginAtZero: true, position: "left", title: { display: true, text: "kB / s" } },
        y1: { beginAtZero: true, position: "right", title: { display: true, text: "streams / s" }, ticks: { precision: 0 }, grid: { drawOnChartArea: false } },
        x: { ticks: { maxTicksLimit: 6 } }
      }
    }
  });

  charts.themed(chart);
  var set = charts.set, size = charts.size;

  var source = new EventSource("/web/provider/live");
  source.addEventListener("provider", function (event) {
    var data = JSON.parse(event.data);
    chart.data.labels = labels(data.series.t);
    chart.data.datasets[0].data = kilo(data.series.bytes);
    chart.data.datasets[1].data = data.series.requests;
    chart.update();
    set("served-today", size(data.today.bytes));
    set("streams-today", String(data.today.streams));
    set("served-month", size(data.month.bytes));
    set("streams-month", String(data.month.streams));
    set("earned-today", data.earned.today.ipsx);
    set("earned-month", data.earned.month.ipsx);
    set("earned-accruing", data.earned.accruing.ipsx);
    set("earned-balance", data.earned.balance.ipsx);
    set("open-deals", String(data.earned.open_deals));
    live.dataset.bytesToday = String(data.today.bytes);
    live.dataset.updated = String(data.at);
    status.textContent = "live, updated " + new Date(data.at * 1000).toISOString().substr(11, 8) + " UTC";
  });
  source.addEventListener("error", function () {
    status.textContent = source.readyState === EventSource.CLOSED ? "stopped: reload the page" : "reconnecting…";
  });
})();
