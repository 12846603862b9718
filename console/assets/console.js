// topiq console: the little the pages need beyond HTML. Everything works without it but the
// live refresh and the checks as you type.
"use strict";

// Parts that refresh themselves: an element with data-refresh="URL" is fetched again every
// data-every seconds (skipped while the tab is hidden or focus is inside it, so a keyboard
// user is never moved), until it holds an element matching data-until.
function keepFresh(part) {
  const every = Math.max(1, Number(part.dataset.every || 5)) * 1000;
  const until = part.dataset.until;
  const tick = async () => {
    if (until && part.querySelector(until)) return;
    if (!document.hidden && !part.contains(document.activeElement)) {
      try {
        const answer = await fetch(part.dataset.refresh, {
          headers: { "X-Topiq-Fragment": "1" },
          credentials: "same-origin",
        });
        if (answer.status === 401) {
          window.location.reload();
          return;
        }
        if (answer.ok) part.innerHTML = await answer.text();
      } catch (_) {
        // Unreachable for a moment (a restart): the next tick tries again.
      }
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

// JSON fields: a data-json textarea says at once when its text is not JSON, and its form is
// not sent until it is (the server checks again).
function checkJson(area) {
  const message = document.getElementById(area.getAttribute("aria-describedby") || "");
  const check = () => {
    let problem = "";
    try {
      JSON.parse(area.value);
    } catch (error) {
      problem = "Not JSON yet: " + error.message;
    }
    area.setCustomValidity(problem);
    area.setAttribute("aria-invalid", problem ? "true" : "false");
    if (message && (problem || !message.dataset.server)) message.textContent = problem;
  };
  if (message && message.textContent.trim()) message.dataset.server = "1";
  area.addEventListener("input", () => {
    if (message) delete message.dataset.server;
    check();
  });
}

// The DLQ table's "select all" box.
function selectAll(box) {
  box.addEventListener("change", () => {
    for (const item of document.querySelectorAll('input[type="checkbox"][name="ids"]')) {
      item.checked = box.checked;
    }
  });
}

document.querySelectorAll("[data-refresh]").forEach(keepFresh);
document.querySelectorAll("textarea[data-json]").forEach(checkJson);
document.querySelectorAll("#select-all").forEach(selectAll);
