// The csa brush page: load an image, paint the hole, send both to POST /api/v1/inpaint,
// compare before and after, download. Plain JS, no dependencies, works offline.
//
// The mask lives in an offscreen canvas at the image's own resolution: opaque white where
// painted (hole), transparent elsewhere. It is rebuilt from a list of operations, which is
// what undo / redo walk, so history costs a few points per stroke instead of a bitmap.
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);
  const el = {
    imageInput: $("image-input"), maskInput: $("mask-input"), maskInvert: $("mask-invert"),
    brush: $("tool-brush"), eraser: $("tool-eraser"), size: $("brush-size"), sizeValue: $("brush-size-value"),
    undo: $("undo"), redo: $("redo"), clear: $("clear"), inpaint: $("inpaint"),
    strategyGroup: $("strategy-group"), strategy: $("strategy"),
    stage: $("stage"), dropzone: $("dropzone"), box: $("canvas-box"), view: $("view"), overlay: $("overlay"),
    resultBar: $("result-bar"), compare: $("compare"), showMask: $("show-mask"),
    download: $("download"), useResult: $("use-result"), status: $("status"), modelName: $("model-name"),
  };
  // Formats Pillow reads on the server: anything else the browser can show is re-encoded as PNG.
  const SERVER_TYPES = /^image\/(png|jpeg|webp|bmp|tiff|gif)$/;
  const HOLE_TINT = "rgba(255, 40, 90, 0.55)";

  const state = {
    file: null,          // Blob sent as the image
    name: "image",
    img: null,           // HTMLImageElement of the input
    result: null,        // HTMLImageElement of the last result
    resultUrl: null,
    ops: [], redo: [],   // mask operations: {kind: "stroke"|"clear"|"file", ...}
    erase: false,
    drawing: null,       // the stroke being painted
    cursor: null,        // last pointer position in CSS px, for the brush outline
    busy: false,
    limits: null,
  };
  const mask = document.createElement("canvas");
  const mctx = mask.getContext("2d");
  const tint = document.createElement("canvas");

  // --- status ------------------------------------------------------------------------
  function setStatus(text, isError = false) {
    el.status.textContent = text;
    el.status.classList.toggle("error", isError);
  }
  function setState(name) { document.body.dataset.state = name; }

  // --- loading the image -----------------------------------------------------------
  function loadImageElement(blob) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(blob);
      const img = new Image();
      img.onload = () => resolve(img);  // the object URL is kept: the <img> draws from it
      img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the browser cannot read this file as an image")); };
      img.src = url;
    });
  }

  async function openImage(blob, name) {
    if (!blob || !(blob.type || "").startsWith("image/")) {
      setStatus(`${name || "that"} is not an image: open a PNG, JPEG or WebP file`, true);
      return;
    }
    let img;
    try { img = await loadImageElement(blob); } catch (e) { setStatus(e.message, true); return; }
    state.img = img;
    state.name = (name || "image").replace(/\.[^.]+$/, "") || "image";
    state.file = SERVER_TYPES.test(blob.type) ? blob : await reencodePng(img);
    state.ops = []; state.redo = [];
    clearResult();
    mask.width = img.naturalWidth; mask.height = img.naturalHeight;
    el.dropzone.hidden = true; el.box.hidden = false;
    layout(); replay(); updateButtons();
    setState("ready");
    setStatus(`${state.name}: ${img.naturalWidth}×${img.naturalHeight}. Paint over what should go, then press Inpaint.`);
  }

  function reencodePng(img) {
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    c.getContext("2d").drawImage(img, 0, 0);
    return new Promise((resolve) => c.toBlob(resolve, "image/png"));
  }

  // --- layout and drawing ------------------------------------------------------------
  function layout() {
    if (!state.img) return;
    const w = state.img.naturalWidth, h = state.img.naturalHeight;
    const maxW = el.stage.clientWidth - 2, maxH = Math.max(240, window.innerHeight * 0.68);
    const scale = Math.min(maxW / w, maxH / h, 4);
    const cssW = Math.max(1, Math.round(w * scale)), cssH = Math.max(1, Math.round(h * scale));
    const dpr = window.devicePixelRatio || 1;
    for (const c of [el.view, el.overlay, tint]) {
      c.width = Math.round(cssW * dpr); c.height = Math.round(cssH * dpr);
    }
    for (const c of [el.view, el.overlay]) { c.style.width = `${cssW}px`; c.style.height = `${cssH}px`; }
    el.box.style.width = `${cssW}px`; el.box.style.height = `${cssH}px`;
    drawView(); drawOverlay();
  }

  function drawView() {
    const ctx = el.view.getContext("2d");
    const W = el.view.width, H = el.view.height;
    ctx.clearRect(0, 0, W, H);
    if (!state.img) return;
    ctx.imageSmoothingQuality = "high";
    if (!state.result) { ctx.drawImage(state.img, 0, 0, W, H); return; }
    // before | after, split where the compare slider is
    const split = Math.round(W * (1 - el.compare.value / 100));
    ctx.drawImage(state.result, 0, 0, W, H);
    ctx.save();
    ctx.beginPath(); ctx.rect(0, 0, split, H); ctx.clip();
    ctx.drawImage(state.img, 0, 0, W, H);
    ctx.restore();
    ctx.fillStyle = "#fff"; ctx.fillRect(split - 1, 0, 2, H);
    const dpr = window.devicePixelRatio || 1;
    if (split > 70 * dpr) label(ctx, "before", 8 * dpr, 8 * dpr, "left");
    if (W - split > 70 * dpr) label(ctx, "after", W - 8 * dpr, 8 * dpr, "right");
  }

  function label(ctx, text, x, y, align) {
    const dpr = window.devicePixelRatio || 1;
    ctx.save();
    ctx.font = `${12 * dpr}px system-ui, sans-serif`;
    const w = ctx.measureText(text).width + 12 * dpr, h = 20 * dpr;
    const left = align === "right" ? x - w : x;
    ctx.fillStyle = "rgba(0, 0, 0, 0.55)"; ctx.fillRect(left, y, w, h);
    ctx.fillStyle = "#fff"; ctx.textBaseline = "middle"; ctx.fillText(text, left + 6 * dpr, y + h / 2);
    ctx.restore();
  }

  function drawOverlay() {
    const ctx = el.overlay.getContext("2d");
    const W = el.overlay.width, H = el.overlay.height;
    ctx.clearRect(0, 0, W, H);
    if (!state.img) return;
    if (!state.result || el.showMask.checked) {
      const t = tint.getContext("2d");
      t.globalCompositeOperation = "source-over";
      t.clearRect(0, 0, W, H);
      t.imageSmoothingEnabled = false;
      t.drawImage(mask, 0, 0, W, H);
      t.globalCompositeOperation = "source-in";
      t.fillStyle = HOLE_TINT; t.fillRect(0, 0, W, H);
      ctx.drawImage(tint, 0, 0);
    }
    if (state.cursor) {  // brush outline
      const dpr = window.devicePixelRatio || 1;
      ctx.beginPath();
      ctx.arc(state.cursor.x * dpr, state.cursor.y * dpr, (brushCss() / 2) * dpr, 0, 2 * Math.PI);
      ctx.lineWidth = 1.5 * dpr;
      ctx.strokeStyle = state.erase ? "#0bf" : "#fff";
      ctx.stroke();
      ctx.setLineDash([4 * dpr, 4 * dpr]); ctx.strokeStyle = "#000"; ctx.stroke(); ctx.setLineDash([]);
    }
  }

  let frame = 0;
  function redraw() {  // at most once per animation frame
    if (frame) return;
    frame = requestAnimationFrame(() => { frame = 0; drawOverlay(); });
  }

  // --- the mask --------------------------------------------------------------------
  function brushCss() { return Number(el.size.value); }
  function cssToImage() { return state.img.naturalWidth / parseFloat(el.overlay.style.width); }

  function paintSegment(op, a, b) {
    mctx.save();
    mctx.globalCompositeOperation = op.erase ? "destination-out" : "source-over";
    mctx.fillStyle = mctx.strokeStyle = "#fff";
    if (!b || (a[0] === b[0] && a[1] === b[1])) {
      mctx.beginPath(); mctx.arc(a[0], a[1], op.width / 2, 0, 2 * Math.PI); mctx.fill();
    } else {
      mctx.lineWidth = op.width; mctx.lineCap = "round"; mctx.lineJoin = "round";
      mctx.beginPath(); mctx.moveTo(a[0], a[1]); mctx.lineTo(b[0], b[1]); mctx.stroke();
    }
    mctx.restore();
  }

  function applyOp(op) {
    if (op.kind === "clear") { mctx.clearRect(0, 0, mask.width, mask.height); return; }
    if (op.kind === "file") { mctx.clearRect(0, 0, mask.width, mask.height); mctx.drawImage(op.canvas, 0, 0); return; }
    const p = op.points;
    if (p.length === 1) paintSegment(op, p[0]);
    else {
      mctx.save();
      mctx.globalCompositeOperation = op.erase ? "destination-out" : "source-over";
      mctx.strokeStyle = "#fff"; mctx.lineWidth = op.width; mctx.lineCap = "round"; mctx.lineJoin = "round";
      mctx.beginPath(); mctx.moveTo(p[0][0], p[0][1]);
      for (let i = 1; i < p.length; i++) mctx.lineTo(p[i][0], p[i][1]);
      mctx.stroke(); mctx.restore();
    }
  }

  function replay() {
    mctx.clearRect(0, 0, mask.width, mask.height);
    for (const op of state.ops) applyOp(op);
    redraw();
  }

  function pushOp(op) {
    state.ops.push(op); state.redo = [];
    updateButtons();
  }
  function undo() {
    if (!state.ops.length || state.drawing) return;
    state.redo.push(state.ops.pop()); replay(); updateButtons();
  }
  function redo() {
    if (!state.redo.length || state.drawing) return;
    const op = state.redo.pop(); state.ops.push(op); applyOp(op); redraw(); updateButtons();
  }
  function clearMask() {
    if (!state.ops.length || state.ops[state.ops.length - 1].kind === "clear") return;
    pushOp({ kind: "clear" }); replay();
  }

  function maskHasHole() {
    // cheap enough: one pass over the alpha channel at the image's resolution
    const data = mctx.getImageData(0, 0, mask.width, mask.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) return true;
    return false;
  }

  function maskPng() {  // white = hole on black, at the image's resolution
    const out = document.createElement("canvas");
    out.width = mask.width; out.height = mask.height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(mask, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  async function openMaskFile(file) {
    if (!state.img) { setStatus("open an image first, then its mask", true); return; }
    let img;
    try { img = await loadImageElement(file); } catch (e) { setStatus(e.message, true); return; }
    const w = state.img.naturalWidth, h = state.img.naturalHeight;
    if (img.naturalWidth !== w || img.naturalHeight !== h) {
      setStatus(`the mask is ${img.naturalWidth}×${img.naturalHeight} but the image is ${w}×${h}: use a mask of the image's size`, true);
      return;
    }
    // The server's rule: a pixel is hole when its brightest colour channel is >= 128.
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, w, h);
    const d = px.data, invert = el.maskInvert.checked;
    for (let i = 0; i < d.length; i += 4) {
      const hole = Math.max(d[i], d[i + 1], d[i + 2]) >= 128;
      d[i] = d[i + 1] = d[i + 2] = 255;
      d[i + 3] = hole !== invert ? 255 : 0;
    }
    ctx.putImageData(px, 0, 0);
    pushOp({ kind: "file", canvas: c }); replay();
    setStatus(`mask loaded from ${file.name}; paint or erase to adjust it.`);
  }

  // --- pointer input ---------------------------------------------------------------
  function pointerPos(ev) {
    const r = el.overlay.getBoundingClientRect();
    return { x: ev.clientX - r.left, y: ev.clientY - r.top };
  }

  el.overlay.addEventListener("pointerdown", (ev) => {
    if (!state.img || state.busy || ev.button !== 0) return;
    ev.preventDefault();
    el.overlay.setPointerCapture(ev.pointerId);
    const p = pointerPos(ev), k = cssToImage();
    state.drawing = { kind: "stroke", erase: state.erase, width: Math.max(1, brushCss() * k), points: [[p.x * k, p.y * k]] };
    paintSegment(state.drawing, state.drawing.points[0]);
    state.cursor = p; redraw();
  });
  el.overlay.addEventListener("pointermove", (ev) => {
    if (!state.img) return;
    const p = pointerPos(ev);
    state.cursor = p;
    const s = state.drawing;
    if (s) {
      const k = cssToImage(), q = [p.x * k, p.y * k], last = s.points[s.points.length - 1];
      if (Math.hypot(q[0] - last[0], q[1] - last[1]) >= 0.5) { s.points.push(q); paintSegment(s, last, q); }
    }
    redraw();
  });
  const endStroke = () => {
    if (!state.drawing) return;
    const s = state.drawing; state.drawing = null;
    pushOp(s);
  };
  el.overlay.addEventListener("pointerup", endStroke);
  el.overlay.addEventListener("pointercancel", endStroke);
  el.overlay.addEventListener("pointerleave", () => { state.cursor = null; redraw(); });

  // --- tools -----------------------------------------------------------------------
  function setTool(erase) {
    state.erase = erase;
    el.brush.classList.toggle("active", !erase); el.brush.setAttribute("aria-pressed", String(!erase));
    el.eraser.classList.toggle("active", erase); el.eraser.setAttribute("aria-pressed", String(erase));
    redraw();
  }
  function setSize(v) {
    const min = Number(el.size.min), max = Number(el.size.max);
    el.size.value = String(Math.round(Math.min(max, Math.max(min, v))));
    el.sizeValue.textContent = el.size.value;
    redraw();
  }
  function updateButtons() {
    const has = !!state.img;
    el.undo.disabled = !state.ops.length;
    el.redo.disabled = !state.redo.length;
    el.clear.disabled = !state.ops.length || state.ops[state.ops.length - 1].kind === "clear";
    el.inpaint.disabled = !has || state.busy;
  }

  el.brush.addEventListener("click", () => setTool(false));
  el.eraser.addEventListener("click", () => setTool(true));
  el.size.addEventListener("input", () => setSize(Number(el.size.value)));
  el.undo.addEventListener("click", undo);
  el.redo.addEventListener("click", redo);
  el.clear.addEventListener("click", clearMask);
  el.compare.addEventListener("input", drawView);
  el.showMask.addEventListener("change", drawOverlay);
  el.imageInput.addEventListener("change", () => {
    const f = el.imageInput.files[0]; el.imageInput.value = "";
    if (f) openImage(f, f.name);
  });
  el.maskInput.addEventListener("change", () => {
    const f = el.maskInput.files[0]; el.maskInput.value = "";
    if (f) openMaskFile(f);
  });
  window.addEventListener("resize", layout);

  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLSelectElement) return;
    const mod = ev.ctrlKey || ev.metaKey, key = ev.key.toLowerCase();
    if (mod && key === "z" && !ev.shiftKey) { ev.preventDefault(); undo(); }
    else if (mod && (key === "y" || (key === "z" && ev.shiftKey))) { ev.preventDefault(); redo(); }
    else if (mod && key === "enter") { ev.preventDefault(); inpaint(); }
    else if (mod || ev.altKey) return;
    else if (key === "[") setSize(Number(el.size.value) * 0.8 - 1);
    else if (key === "]") setSize(Number(el.size.value) * 1.25 + 1);
    else if (key === "b") setTool(false);
    else if (key === "e") setTool(true);
  });

  // drop and paste
  ["dragenter", "dragover"].forEach((t) => document.addEventListener(t, (ev) => {
    ev.preventDefault(); el.stage.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((t) => document.addEventListener(t, () => el.stage.classList.remove("dragging")));
  document.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const f = [...(ev.dataTransfer?.files || [])].find((x) => x.type.startsWith("image/"));
    if (f) openImage(f, f.name); else setStatus("drop an image file", true);
  });
  document.addEventListener("paste", (ev) => {
    const item = [...(ev.clipboardData?.items || [])].find((x) => x.kind === "file" && x.type.startsWith("image/"));
    if (item) { ev.preventDefault(); openImage(item.getAsFile(), "pasted"); }
  });

  // --- inpainting ------------------------------------------------------------------
  function clearResult() {
    state.result = null;
    if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
    state.resultUrl = null;
    el.resultBar.hidden = true;
    el.download.removeAttribute("href");
  }

  async function inpaint() {
    if (!state.img || state.busy) return;
    if (!maskHasHole()) { setStatus("paint over the part to remove first (or load a mask file)", true); return; }
    const lim = state.limits;
    if (lim && state.file.size > lim.max_upload_bytes) {
      setStatus(`the image file is ${(state.file.size / 2 ** 20).toFixed(1)} MiB, over the server's limit of ${(lim.max_upload_bytes / 2 ** 20).toFixed(0)} MiB`, true);
      return;
    }
    state.busy = true; updateButtons(); setState("busy");
    const t0 = performance.now();
    const tick = setInterval(() => setStatus(`Inpainting… ${((performance.now() - t0) / 1000).toFixed(1)} s`), 100);
    try {
      const form = new FormData();
      form.append("image", state.file, `${state.name}${extensionOf(state.file.type)}`);
      form.append("mask", await maskPng(), "mask.png");
      if (el.strategy.value) form.append("strategy", el.strategy.value);
      const res = await fetch(`${API}/inpaint`, { method: "POST", body: form });
      if (!res.ok) {
        let detail = `${res.status} ${res.statusText}`;
        try { const body = await res.json(); detail = body.detail || detail; } catch (_) { /* not JSON */ }
        throw new Error(detail);
      }
      const blob = await res.blob();
      const img = await loadImageElement(blob);
      clearResult();
      state.result = img; state.resultUrl = img.src;
      el.download.href = img.src;
      el.download.download = `${state.name}-inpainted.png`;
      el.resultBar.hidden = false;
      el.compare.value = "50"; el.showMask.checked = false;
      drawView(); drawOverlay();
      setState("done");
      setStatus(`Done in ${((performance.now() - t0) / 1000).toFixed(2)} s. Drag the slider to compare before and after.`);
    } catch (e) {
      setState("error");
      setStatus(`Inpainting failed: ${e.message}`, true);
    } finally {
      clearInterval(tick);
      state.busy = false; updateButtons();
    }
  }
  el.inpaint.addEventListener("click", inpaint);

  function extensionOf(type) {
    const m = /^image\/([a-z]+)/.exec(type || "");
    return m ? `.${m[1] === "jpeg" ? "jpg" : m[1]}` : ".png";
  }

  el.useResult.addEventListener("click", async () => {
    if (!state.result) return;
    const blob = await (await fetch(state.resultUrl)).blob();
    await openImage(blob, `${state.name}-inpainted.png`);
  });

  // --- model info ------------------------------------------------------------------
  fetch(`${API}/model`).then((r) => r.json()).then((info) => {
    state.limits = info.limits || null;
    const params = info.parameters ? ` · ${(info.parameters / 1e6).toFixed(1)} M parameters` : "";
    el.modelName.textContent = `model: ${info.name || "unnamed"}${params}`;
    const strategies = info.strategies || [];
    if (strategies.length > 1) {
      // "auto" sends no strategy: the server picks one by image size
      const auto = document.createElement("option");
      auto.value = ""; auto.textContent = "auto"; auto.title = info.default_strategy || "";
      el.strategy.append(auto);
      for (const s of strategies) {
        const o = document.createElement("option"); o.value = o.textContent = s; el.strategy.append(o);
      }
      el.strategyGroup.title = `how large images are handled; auto: ${info.default_strategy || "the server's default"}`;
      el.strategyGroup.hidden = false;
    }
  }).catch(() => { el.modelName.textContent = "model: unavailable"; });

  setSize(Number(el.size.value));
  updateButtons();
})();
