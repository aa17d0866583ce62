// meshscale admin console: small progressive enhancements. Pages work without it.
"use strict";
(function () {
  const csrf = document.body.dataset.csrf || "";

  // Confirm before destructive actions (buttons with data-confirm).
  document.addEventListener("click", function (ev) {
    const el = ev.target.closest("[data-confirm]");
    if (el && !window.confirm(el.dataset.confirm)) {
      ev.preventDefault();
    }
    const copy = ev.target.closest("[data-copy]");
    if (copy && navigator.clipboard) {
      navigator.clipboard.writeText(copy.dataset.copy).catch(function () {});
    }
  });

  // Policy editor: validate as you type, through the server.
  const text = document.getElementById("policy-text");
  const status = document.getElementById("policy-status");
  if (text && status) {
    let timer = null;
    let seq = 0;
    const check = function () {
      const mine = ++seq;
      status.textContent = "checking…";
      status.className = "";
      fetch(text.dataset.check, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ policy: text.value }),
      }).then(function (r) { return r.json(); }).then(function (res) {
        if (mine !== seq) { return; }
        status.textContent = res.ok ? "✓ valid" : res.message;
        status.className = res.ok ? "ok" : "error";
      }).catch(function () {
        if (mine === seq) { status.textContent = "could not check"; status.className = "error"; }
      });
    };
    text.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(check, 300);
    });
  }
})();
