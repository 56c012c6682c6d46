/* Atelier dashboard: progressive enhancement only. Every page works without this file; with it,
 * the job list refreshes itself, the job page follows the job's Server-Sent Events, the plan preview
 * opens in place and forms are not sent twice. No dependencies, served by the app (works offline). */
(function () {
  "use strict";

  var FETCH = { "X-Requested-With": "fetch" };
  var TERMINAL = { "job.succeeded": 1, "job.failed": 1, "job.canceled": 1 };
  var EVENTS = ["job.created", "job.started", "job.succeeded", "job.failed", "job.canceled",
    "stage.queued", "stage.started", "stage.progress", "stage.completed", "stage.failed", "stage.retrying",
    "stage.redriven", "artifact.created", "job.warning"];

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  function toLogin() {
    window.location.assign("/dashboard/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  function getFragment(url) {
    return fetch(url, { headers: FETCH, credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (r.status === 401) { toLogin(); throw new Error("signed out"); }
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    });
  }

  /* Keep the <details> the user opened or closed as they were across a refresh. */
  function swap(container, html) {
    var open = {};
    container.querySelectorAll("details[data-stage]").forEach(function (d) { open[d.dataset.stage] = d.open; });
    var stageTable = container.querySelector("details.stage-table");
    var tableOpen = stageTable ? stageTable.open : false;
    container.innerHTML = html;
    container.querySelectorAll("details[data-stage]").forEach(function (d) {
      if (d.dataset.stage in open) { d.open = open[d.dataset.stage]; }
    });
    var newTable = container.querySelector("details.stage-table");
    if (newTable) { newTable.open = tableOpen; }
    bindConfirms(container);
  }

  /* ---- job list: re-read the rows every few seconds while a listed job is moving (slower otherwise,
   * so jobs submitted elsewhere still appear), and not at all while the tab is hidden ---- */
  function pollList(el) {
    var fast = parseInt(el.dataset.interval || "3000", 10);
    function live() { return el.querySelector('[data-status="queued"], [data-status="running"]') !== null; }
    function next() { setTimeout(tick, live() ? fast : fast * 5); }
    function tick() {
      if (document.hidden) { next(); return; }
      getFragment(el.dataset.poll).then(function (html) { el.innerHTML = html; })
        .catch(function () {}).then(next);
    }
    next();
  }

  /* ---- job page: follow the job's events; redraw the timeline when a stage moves ---- */
  function followJob(el) {
    var root = function () { return el.querySelector(".live-root"); };
    var terminal = function () { var r = root(); return r && r.dataset.terminal === "true"; };
    if (terminal()) { return; }
    var timer = null, ticking = null, source = null, refreshing = false, again = false;

    function refresh() {
      if (refreshing) { again = true; return; }
      refreshing = true;
      getFragment(el.dataset.liveFragment).then(function (html) {
        swap(el, html);
        if (terminal()) { stop(); }
      }).catch(function () {}).then(function () {
        refreshing = false;
        if (again) { again = false; schedule(50); }
      });
    }
    function schedule(ms) {
      if (timer) { return; }
      timer = setTimeout(function () { timer = null; refresh(); }, ms);
    }
    function stop() {
      if (source) { source.close(); source = null; }
      if (ticking) { clearInterval(ticking); ticking = null; }
    }
    function progress(data) {
      var key = data.stage + "|" + (data.item || "");
      var box = el.querySelector('[data-progress-key="' + (window.CSS && CSS.escape ? CSS.escape(key) : key) + '"]');
      if (!box) { schedule(100); return; }
      var bar = box.querySelector("progress");
      bar.max = data.total; bar.value = data.step;
      box.querySelector(".step-text").textContent = "step " + data.step + "/" + data.total;
    }
    function onEvent(ev) {
      var data = {};
      try { data = JSON.parse(ev.data).data || {}; } catch (e) { /* keep-alive or malformed: ignore */ }
      if (ev.type === "stage.progress") { progress(data); return; }
      if (TERMINAL[ev.type]) {
        if (source) { source.close(); source = null; }  // the server ends the stream after this event
        schedule(0);
        return;
      }
      schedule(150);
    }
    if (window.EventSource) {
      source = new EventSource(el.dataset.events);
      EVENTS.forEach(function (t) { source.addEventListener(t, onEvent); });
      source.onerror = function () {
        // the browser reconnects by itself (with Last-Event-ID); make sure the page is current meanwhile
        schedule(1000);
      };
    }
    // running bars grow with time even when no event arrives
    ticking = setInterval(function () { if (!document.hidden) { schedule(0); } }, 2500);
  }

  /* ---- plan preview: POST the form without the file, show the result under the form ---- */
  function bindPreview(button) {
    button.addEventListener("click", function (e) {
      var form = button.form;
      var target = document.querySelector(form.dataset.previewTarget || "#preview");
      if (!target || !window.fetch || !window.FormData) { return; }  // plain form post instead
      e.preventDefault();
      var body = new FormData(form);
      body.delete("product_image");
      target.innerHTML = '<p class="muted">Planning…</p>';
      fetch(button.getAttribute("formaction"), {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "X-Requested-With": "fetch", "X-CSRF-Token": csrf() }
      }).then(function (r) {
        if (r.status === 401) { toLogin(); return ""; }
        return r.text();
      }).then(function (html) { target.innerHTML = html; })
        .catch(function (err) { target.innerHTML = '<p class="alert bad">Preview failed: ' + String(err) + "</p>"; });
    });
  }

  function bindConfirms(scope) {
    scope.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.bound) { return; }
      form.dataset.bound = "1";
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.dataset.confirm)) { e.preventDefault(); }
      });
    });
  }

  function bindOnce(form) {
    form.addEventListener("submit", function (e) {
      var via = e.submitter;
      if (via && via.hasAttribute("data-preview")) { return; }
      if (form.dataset.sent) { e.preventDefault(); return; }
      form.dataset.sent = "1";
      form.querySelectorAll('button[type="submit"]').forEach(function (b) { b.setAttribute("aria-busy", "true"); });
      var submit = form.querySelector("#submit-job");
      if (submit) { submit.textContent = "Submitting…"; }
    });
  }

  function start() {
    document.querySelectorAll("[data-poll]").forEach(pollList);
    document.querySelectorAll("[data-live-fragment]").forEach(followJob);
    document.querySelectorAll("button[data-preview]").forEach(bindPreview);
    document.querySelectorAll("form.job-form").forEach(bindOnce);
    bindConfirms(document);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
