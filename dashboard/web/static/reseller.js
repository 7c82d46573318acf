// The reseller's sub-users page: each sub-user's month and the totals, kept current by the
// Server-Sent Events of /web/reseller/live (the page's own cursor in data-live-url).
(function () {
  "use strict";
  var figures = document.getElementById("reseller-figures");
  var status = document.getElementById("live-status");
  if (!figures || !status || typeof EventSource === "undefined") return;

  function set(id, text) { var el = document.getElementById(id); if (el) el.textContent = text; }
  function setIn(row, selector, text) { var el = row.querySelector(selector); if (el) el.textContent = text; }
  function size(bytes) {
    var units = ["B", "kB", "MB", "GB", "TB"], value = bytes, i = 0;
    while (Math.abs(value) >= 1000 && i < units.length - 1) { value /= 1000; i++; }
    return i === 0 ? value + " B" : value.toFixed(1) + " " + units[i];
  }

  var source = new EventSource(figures.dataset.liveUrl);
  source.addEventListener("reseller", function (event) {
    var data = JSON.parse(event.data);
    document.querySelectorAll("#subusers tbody tr[data-subuser]").forEach(function (row) {
      var sub = data.subusers[row.dataset.subuser];
      if (!sub) return;
      setIn(row, ".streams", String(sub.streams));
      setIn(row, ".used", size(sub.used_bytes));
      setIn(row, ".spent", sub.spent.ipsx);
      var standing = row.querySelector(".standing");
      if (standing) {
        standing.textContent = sub.standing;
        standing.classList.toggle("state-active", sub.standing === "active");
        standing.classList.toggle("state-cancelled", sub.standing !== "active");
      }
      row.dataset.streams = String(sub.streams);
      row.dataset.usedBytes = String(sub.used_bytes);
      row.dataset.spent = sub.spent.base_units;
    });
    set("month-bytes", size(data.month.bytes));
    set("month-streams", String(data.month.streams));
    set("month-charged", data.month.charged.ipsx);
    set("markup-month", data.month.markup.ipsx);
    set("markup-total", data.earned.ipsx);
    set("funds-available", data.funds.available.ipsx);
    figures.dataset.monthBytes = String(data.month.bytes);
    figures.dataset.markupMonth = data.month.markup.base_units;
    figures.dataset.earned = data.earned.base_units;
    figures.dataset.updated = String(data.at);
    status.textContent = "live, updated " + new Date(data.at * 1000).toISOString().substr(11, 8) + " UTC";
  });
  source.addEventListener("error", function () {
    status.textContent = source.readyState === EventSource.CLOSED ? "stopped: reload the page" : "reconnecting…";
  });
})();
