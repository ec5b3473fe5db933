// adgate console: keeps the server-rendered pages live. It polls /ui/api/… and swaps in the
// HTML the server renders there, so markup is built in one place (src/console/pages.rs) and
// every value is escaped by it. No framework, no build step.
"use strict";

(function () {
  const POLL_MS = 1000;

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      // The session ended (token rotated, cookie cleared): back to the sign-in form.
      location.assign("/ui/login?next=" + encodeURIComponent(location.pathname));
      throw new Error("signed out");
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  }

  function fragment(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.content.firstElementChild;
  }

  // Poll `step` every `every` ms; back off (up to 10×) while the gateway does not answer.
  function poll(every, step, onError) {
    let failures = 0;
    async function tick() {
      try {
        const again = await step();
        failures = 0;
        if (again === false) return;
      } catch (e) {
        failures += 1;
        if (onError) onError(e);
      }
      setTimeout(tick, every * Math.min(1 + failures, 10));
    }
    setTimeout(tick, every);
  }

  function liveBatch(section) {
    const id = section.dataset.batch;
    const grid = document.getElementById("grid");
    const live = document.getElementById("live");
    let cursor = section.dataset.cursor;
    // The last HTML applied per card: a card sent again unchanged is not replaced (its
    // images would be re-decoded for nothing).
    const applied = new Map();
    if (section.dataset.done === "true") return;
    live.textContent = "running · live";
    poll(POLL_MS, async () => {
      const d = await getJSON(
        "/ui/api/batches/" + encodeURIComponent(id) + "?since=" + encodeURIComponent(cursor));
      for (const [jobId, html] of Object.entries(d.cards)) {
        if (applied.get(jobId) === html) continue;
        applied.set(jobId, html);
        const card = fragment(html);
        const old = document.getElementById("job-" + jobId);
        if (old) old.replaceWith(card);
        else grid.appendChild(card);
      }
      document.getElementById("counts").innerHTML = d.counts_html;
      document.getElementById("cost").textContent = d.cost_text;
      document.getElementById("eta").textContent = d.eta_text;
      document.getElementById("jobs").textContent = String(d.batch.totals.jobs);
      cursor = d.batch.cursor;
      if (d.batch.done) {
        section.dataset.done = "true";
        live.textContent = "finished";
        return false;
      }
      live.textContent = "running · live";
      return true;
    }, () => { live.textContent = "gateway not answering; retrying…"; });
  }

  function liveProviders(tbody) {
    poll(2 * POLL_MS, async () => {
      const d = await getJSON("/ui/api/providers");
      tbody.innerHTML = d.rows_html;
    });
  }

  function liveBatches(section) {
    poll(3 * POLL_MS, async () => {
      const d = await getJSON("/ui/api/batches");
      section.innerHTML = d.html;
    });
  }

  function start() {
    const batch = document.getElementById("batch");
    if (batch) liveBatch(batch);
    const providers = document.getElementById("provider-rows");
    if (providers) liveProviders(providers);
    const batches = document.getElementById("batches");
    if (batches) liveBatches(batches);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
