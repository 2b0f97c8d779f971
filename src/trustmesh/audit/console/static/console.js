// The console's one script: pages that say so (data-page) ask their feed for news
// every data-refresh ms and add it. Everything shown is set as text (textContent),
// never as markup.
(function () {
  "use strict";
  var body = document.body;
  var every = Math.max(1000, parseInt(body.getAttribute("data-refresh") || "2000", 10));
  var TRACE = /^[0-9a-f]{32}$/;

  function get(url) {
    return fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/signin"); return null; }
        return r.ok ? r.json() : null;
      })
      .catch(function () { return null; });
  }

  function cell(text, cls) {
    var td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) { td.className = cls; }
    return td;
  }

  function link(href, text) {
    var td = document.createElement("td");
    var a = document.createElement("a");
    a.setAttribute("href", href);
    a.textContent = text;
    td.appendChild(a);
    return td;
  }

  function eventRow(e) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-seq", e.seq);
    tr.className = "fresh";
    [cell(e.seq), cell(e.time), cell(e.component), cell(e.decision, e.decision), cell(e.reason),
     cell(e.who, "id"), cell(e.message, "message"), cell(e.path, "id")].forEach(function (td) { tr.appendChild(td); });
    tr.appendChild(TRACE.test(e.trace_id) ? link("/traces/" + e.trace_id, e.trace_id.slice(0, 8) + "…") : cell(""));
    return tr;
  }

  function alertRow(a) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", a.id);
    tr.className = "fresh";
    tr.appendChild(/^[0-9]+$/.test(a.id) ? link("/alerts/" + a.id, a.id) : cell(a.id));
    [cell(a.time), cell(a.level, a.level), cell(a.title), cell(a.rule), cell(a.group, "id"),
     cell(a.events)].forEach(function (td) { tr.appendChild(td); });
    return tr;
  }

  function follow(marker, key, table, row) {
    var tbody = document.querySelector(table + " tbody");
    if (!tbody) { return; }
    var params = new URLSearchParams(window.location.search);
    params.set("after", marker.getAttribute("data-after") || "0");
    get(marker.getAttribute("data-feed") + "?" + params.toString()).then(function (doc) {
      var found = doc && doc[key];
      if (!found || !found.length) { return; }
      found.forEach(function (item) {  // oldest first: each goes on top
        tbody.insertBefore(row(item), tbody.firstChild);
      });
      var last = found[found.length - 1];
      marker.setAttribute("data-after", String(key === "events" ? last.seq : last.id));
    });
  }

  function graph() {
    get("/api/graph").then(function (doc) {
      if (!doc || !doc.edges) { return; }
      document.querySelectorAll("#graph [data-edge]").forEach(function (g) {
        var counts = doc.edges[g.getAttribute("data-edge")] || [0, 0];
        g.querySelector("[data-count=allow]").textContent = String(counts[0]);
        g.querySelector("[data-count=deny]").textContent = String(counts[1]);
      });
      var list = document.getElementById("attempted");
      if (!list) { return; }
      var declared = {};
      document.querySelectorAll("#graph [data-edge]").forEach(function (g) {
        declared[g.getAttribute("data-edge")] = true;
      });
      var keys = Object.keys(doc.edges).filter(function (k) { return !declared[k]; });
      if (!keys.length) { return; }
      list.textContent = "";
      keys.forEach(function (k) {
        var li = document.createElement("li");
        li.setAttribute("data-edge", k);
        li.textContent = k + ": " + doc.edges[k][1] + " denied, " + doc.edges[k][0] + " allowed";
        list.appendChild(li);
      });
    });
  }

  function tick() {
    var page = body.getAttribute("data-page");
    var marker = document.querySelector("p.live[data-feed]");
    if (page === "graph") { graph(); }
    if (page === "events" && marker) { follow(marker, "events", "#events", eventRow); }
    if (page === "alerts" && marker) { follow(marker, "alerts", "#alerts", alertRow); }
  }

  if (["graph", "events", "alerts"].indexOf(body.getAttribute("data-page")) >= 0) {
    window.setInterval(tick, every);
  }
})();
