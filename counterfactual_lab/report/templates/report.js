// report.html's one script (templating.py gives the page a CSP that allows it by hash and nothing
// else). It draws the metrics table from the JSON block, 200 rows a page, sorts and filters it,
// opens the section a #hash points into, and expands or collapses every section. Every cell is
// written with textContent, never as HTML. Without it the summary still reads; the table says so.
(function () {
  "use strict";
  var sections = function () { return Array.prototype.slice.call(document.querySelectorAll("details")); };
  var expand = document.getElementById("expand-all");
  var collapse = document.getElementById("collapse-all");
  if (expand) expand.addEventListener("click", function () { sections().forEach(function (d) { d.open = true; }); });
  if (collapse) collapse.addEventListener("click", function () { sections().forEach(function (d) { d.open = false; }); });

  var block = document.getElementById("metrics-data");
  var table = null;
  if (block) {
    var data = JSON.parse(block.textContent);
    var columns = data.columns, numeric = {}, rows = data.rows, view = rows.slice();
    data.numeric.forEach(function (c) { numeric[c] = true; });
    var PAGE = 200, page = 0, sortColumn = -1, sortDirection = 1, timer = null;
    var body = document.querySelector("#metrics-table tbody");
    var count = document.getElementById("metrics-count");
    var search = document.getElementById("metrics-filter");
    var verdict = document.getElementById("metrics-verdict");
    var previous = document.getElementById("metrics-prev");
    var next = document.getElementById("metrics-next");
    var verdictColumn = columns.indexOf("verdict");
    var format = function (value, column) {
      if (value === null || value === undefined) return column === "value" ? "undefined" : "";
      if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(3)));
      return String(value);
    };
    var matchesVerdict = function (row, wanted) {
      if (!wanted) return true;
      if (verdictColumn < 0) return false;
      if (wanted === "called-or-confounded") return row[verdictColumn] === "called" || row[verdictColumn] === "confounded";
      return row[verdictColumn] === wanted;
    };
    var sortView = function () {
      var c = sortColumn, asNumber = numeric[columns[c]] === true, d = sortDirection;
      view.sort(function (a, b) {
        var x = a[c], y = b[c];
        if (x === null && y === null) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        return (asNumber ? x - y : String(x).localeCompare(String(y))) * d;
      });
    };
    var draw = function () {
      var fragment = document.createDocumentFragment();
      var start = page * PAGE, end = Math.min(view.length, start + PAGE);
      for (var i = start; i < end; i++) {
        var tr = document.createElement("tr"), row = view[i];
        if (verdictColumn >= 0 && row[verdictColumn]) tr.className = String(row[verdictColumn]).replace(/ /g, "-");
        for (var j = 0; j < columns.length; j++) {
          var td = document.createElement("td");
          td.textContent = format(row[j], columns[j]);
          if (td.textContent.length > 60) td.title = td.textContent;
          if (numeric[columns[j]]) td.classList.add("num");
          if (row[j] === null && columns[j] === "value") td.classList.add("undefined");
          tr.appendChild(td);
        }
        fragment.appendChild(tr);
      }
      body.replaceChildren(fragment);
      var pages = Math.max(1, Math.ceil(view.length / PAGE));
      count.textContent = (view.length ? (start + 1) + "–" + end : "0") + " of " + view.length + " rows"
        + (view.length !== rows.length ? " (" + rows.length + " in all)" : "") + " · page " + (page + 1) + " of " + pages;
      previous.disabled = page === 0;
      next.disabled = page >= pages - 1;
    };
    var apply = function () {
      var query = search.value.trim().toLowerCase(), wanted = verdict.value;
      view = rows.filter(function (row) {
        if (!matchesVerdict(row, wanted)) return false;
        if (!query) return true;
        for (var i = 0; i < row.length; i++) {
          if (row[i] !== null && String(row[i]).toLowerCase().indexOf(query) >= 0) return true;
        }
        return false;
      });
      if (sortColumn >= 0) sortView();
      page = 0;
      draw();
    };
    document.querySelectorAll("#metrics-table th button").forEach(function (button) {
      button.addEventListener("click", function () {
        var c = Number(button.getAttribute("data-col"));
        sortDirection = c === sortColumn ? -sortDirection : 1;
        sortColumn = c;
        document.querySelectorAll("#metrics-table th").forEach(function (th) { th.setAttribute("aria-sort", "none"); });
        button.parentNode.setAttribute("aria-sort", sortDirection > 0 ? "ascending" : "descending");
        sortView();
        page = 0;
        draw();
      });
    });
    search.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
    verdict.addEventListener("change", apply);
    previous.addEventListener("click", function () { if (page > 0) { page -= 1; draw(); } });
    next.addEventListener("click", function () { page += 1; draw(); });
    table = { search: search, verdict: verdict, apply: apply };
    draw();
  }

  // #section opens that section; #metrics?q=WORD&verdict=V also filters the table.
  var follow = function () {
    var hash = decodeURIComponent(location.hash.slice(1));
    if (!hash) return;
    var parts = hash.split("?"), target = document.getElementById(parts[0]);
    if (!target) return;
    for (var node = target; node; node = node.parentElement) { if (node.tagName === "DETAILS") node.open = true; }
    if (parts[0] === "metrics" && table && parts[1]) {
      var params = new URLSearchParams(parts[1]);
      table.search.value = params.get("q") || "";
      table.verdict.value = params.get("verdict") || "";
      table.apply();
    }
    target.scrollIntoView();
  };
  window.addEventListener("hashchange", follow);
  follow();
})();
