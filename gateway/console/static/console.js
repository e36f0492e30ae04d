// Progressive enhancement only: every page works without this file.
"use strict";

// Copy buttons: hidden in the markup, shown here (they need JavaScript to work).
function copyText(button) {
  const source = document.getElementById(button.dataset.copyFrom);
  const status = document.getElementById(button.dataset.copyFrom + "-copy-status");
  const done = (ok) => {
    button.textContent = ok ? "Copied" : "Copy";
    if (status) {
      status.textContent = ok ? "Copied to the clipboard." : "Copy failed: select the text and copy it.";
    }
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(source.value).then(() => done(true), () => done(false));
    return;
  }
  // Older browsers and plain-HTTP hosts other than localhost: select and copy.
  source.focus();
  source.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (e) {
    ok = false;
  }
  done(ok);
}

function enhance(root) {
  root.querySelectorAll("button[data-copy-from]").forEach((button) => {
    if (button.dataset.enhanced) return;
    button.dataset.enhanced = "1";
    button.hidden = false;
    button.addEventListener("click", () => copyText(button));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  enhance(document);
  if (window.htmx) {
    // A 400 carries a page fragment with the error message: show it like a success.
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "400", swap: true, error: false },
      { code: "[45]..", swap: false, error: true },
    ];
    htmx.onLoad(enhance);
  }
});
