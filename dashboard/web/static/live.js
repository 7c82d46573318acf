// The overview's live chart and figures: Chart.js fed by the Server-Sent Events of /web/live.
(function () {
  "use strict";
  var canvas = document.getElementById("live-chart");
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!canvas || !live || typeof Chart === "undefined" || !window.IpsxCharts) return;

  var initial = JSON.parse(document.getElementById("series-data").textContent);
  var charts = window.IpsxCharts, labels = charts.labels;

  var chart = new Chart(canvas, {
    type: "line",
    data: {
      labels: labels(initial.t),
      datasets: [
        { label: "Requests / s", data: initial.requests, yAxisID: "y", tension: 0.25, pointRadius: 0 },
        { label: "kB / s", data: initial.bytes.map(function (b) { return b / 1000; }), yAxisID: "y1", tension: 0.25, pointRadius: 0 }
      ]
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        y: { beginAtZero: true, position: "left", title: { display: true, text: "requests / s" }, ticks: { precision: 0 } },
        y1: { beginAtZero: true, position: "right", title: { display: true, text: "kB / s" }, grid: { drawOnChartArea: false } },
        x: { ticks: { maxTicksLimit: 6 } }
      }
    }
  });

  charts.themed(chart);
  var set = charts.set, size = charts.size;

  var source = new EventSource("/web/live");
  source.addEventListener("totals", function (event) {
    var data = JSON.parse(event.data);
    chart.data.labels = labels(data.series.t);
    chart.data.datasets[0].data = data.series.requests;
    chart.data.datasets[1].data = data.series.bytes.map(function (b) { return b / 1000; });
    chart.update();
    set("requests-today", String(data.today.requests));
    set("bytes-today", size(data.today.bytes));
    set("spend-today", data.spend.total.ipsx);
    set("spend-settled", data.spend.settled_today.ipsx);
    set("spend-accruing", data.spend.accruing.ipsx);
    set("open-deals", String(data.spend.open_deals));
    set("balance-available", data.balance.available.ipsx);
    set("balance-reserved", data.balance.reserved.ipsx);
    live.dataset.requestsToday = String(data.today.requests);
    live.dataset.bytesToday = String(data.today.bytes);
    live.dataset.spendTotal = data.spend.total.base_units;
    live.dataset.chartRequests = String(data.series.requests.reduce(function (a, b) { return a + b; }, 0));
    live.dataset.updated = String(data.at);
    status.textContent = "live, updated " + new Date(data.at * 1000).toISOString().substr(11, 8) + " UTC";
  });
  source.addEventListener("error", function () {
    status.textContent = source.readyState === EventSource.CLOSED ? "stopped: reload the page" : "reconnecting…";
  });
})();
