/* Shared helpers for the panel pages. Vanilla JS, no build step, no external requests. */
"use strict";

const Panel = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  /* POST with the session cookie and the CSRF header; resolves to {ok, status, body}. */
  async function post(url, data) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrf(), Accept: "application/json" },
      body: data || null,
    });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = { detail: resp.statusText }; }
    return { ok: resp.ok, status: resp.status, body };
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + " min " + String(s).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  /* Copy text; falls back to a hidden textarea where the Clipboard API is missing (plain HTTP). */
  async function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    const area = el("textarea", { class: "visually-hidden", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }

  /* Random hex from getRandomValues (crypto.randomUUID needs HTTPS; LAN boxes are plain HTTP). */
  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /* Cancel/retry buttons anywhere: <button data-action="cancel" data-url="...">. */
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    btn.disabled = true;
    const res = await post(btn.dataset.url);
    if (!res.ok) {
      alert((res.body && res.body.detail) || "The request failed.");
      btn.disabled = false;
    } else if (btn.dataset.reload !== undefined) {
      location.reload();
    }
  });

  /* Copy buttons: <button data-copy="#selector">; a hidden <textarea> holds the raw text. */
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-copy]");
    if (!btn) return;
    const src = document.querySelector(btn.dataset.copy);
    await copy(src.value !== undefined ? src.value : src.innerText);
    const label = btn.textContent;
    btn.textContent = "Copied";
    setTimeout(() => { btn.textContent = label; }, 1500);
  });

  return { post, el, duration, copy, randomId, csrf };
})();
