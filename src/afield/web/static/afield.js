// afield dashboard: the little script the pages use. Everything it adds is optional: each page
// shows the same numbers as tables without it.
//
// Charts: a <canvas data-chart="ID"> is drawn by Chart.js from the JSON in the
// <script type="application/json" id="ID"> beside it: {"type": "bar", "labels": [...],
// "datasets": [{"label": ..., "data": [...]}], "stacked": true}.
(function () {
  "use strict";
  var palette = ["#1f6feb", "#1a7f37", "#bf8700", "#8250df", "#cf222e", "#0a7d8c", "#6e7781",
    "#d4558c", "#57606a", "#2da44e"];

  function drawCharts(root) {
    if (typeof Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) { return; }
      var source = document.getElementById(canvas.dataset.chart);
      if (!source) { return; }
      var spec = JSON.parse(source.textContent);
      spec.datasets.forEach(function (set, i) {
        set.backgroundColor = set.backgroundColor || palette[i % palette.length];
      });
      canvas.dataset.drawn = "1";
      new Chart(canvas, {
        type: spec.type || "bar",
        data: { labels: spec.labels, datasets: spec.datasets },
        options: {
          responsive: true, maintainAspectRatio: false, animation: false,
          indexAxis: spec.horizontal ? "y" : "x",
          scales: { x: { stacked: !!spec.stacked }, y: { stacked: !!spec.stacked, beginAtZero: true } },
          plugins: { legend: { position: "bottom" } }
        }
      });
    });
  }

  // A live region says when its stream is connected, so a reader knows the numbers move.
  function markLive() {
    document.body.addEventListener("htmx:sseOpen", function (e) {
      var mark = e.target.querySelector(".live");
      if (mark) { mark.classList.add("on"); mark.textContent = "live"; }
    });
    document.body.addEventListener("htmx:sseError", function (e) {
      var mark = e.target.querySelector(".live");
      if (mark) { mark.classList.remove("on"); mark.textContent = "reconnecting…"; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
    markLive();
    document.body.addEventListener("htmx:afterSwap", function (e) { drawCharts(e.target); });
  });
})();
