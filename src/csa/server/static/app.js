// The csa brush page: load an image, paint the hole, pick a method, send both to
// POST /api/v1/inpaint, compare before and after, keep going on the result, download.
// Plain JS, no dependencies, works offline.
//
// - The view: one canvas the size of the stage (the viewport) shows the part of the image
//   in view at the current zoom and pan. A pointer move redraws at most that canvas, and
//   while painting only the screen rectangle the new stroke segment touched; a move
//   without painting only moves the brush outline (a DOM element), no canvas is drawn.
// - The mask: an offscreen canvas at the image's own resolution, the hole colour where
//   painted, transparent elsewhere; strokes are painted in image pixels at any zoom.
// - The history: one undo stack. Mask operations ("stroke" | "clear" | "file") of the
//   round being painted are undone one by one; an inpainting result is a "round" entry
//   that takes those operations with it and becomes the image the next round edits.
//   Undoing a round brings back the image before it and the mask that made it, together,
//   so each further Ctrl+Z goes back one more round. The mask is rebuilt from its list of
//   operations (a few points per stroke, not a bitmap). Round images count against
//   HISTORY_BYTES; past it the oldest rounds fall off the bottom.
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);
  const el = {
    imageInput: $("image-input"), maskInput: $("mask-input"), maskInvert: $("mask-invert"),
    brush: $("tool-brush"), eraser: $("tool-eraser"), size: $("brush-size"), sizeValue: $("brush-size-value"),
    undo: $("undo"), redo: $("redo"), clear: $("clear"),
    method: $("method"), strategy: $("strategy"), methodNote: $("method-note"),
    inpaint: $("inpaint"), cancel: $("cancel"),
    stage: $("stage"), view: $("view"), dropzone: $("dropzone"), cursor: $("brush-cursor"),
    split: $("split"), labelBefore: $("label-before"), labelAfter: $("label-after"), labelOriginal: $("label-original"),
    zoomBar: $("zoom-bar"), zoomIn: $("zoom-in"), zoomOut: $("zoom-out"), zoomFit: $("zoom-fit"), zoom1: $("zoom-1"),
    zoomValue: $("zoom-value"),
    resultBar: $("result-bar"), compare: $("compare"), roundNote: $("round-note"), download: $("download"),
    status: $("status"), modelName: $("model-name"),
    showSources: $("show-sources"), sourceFrom: $("source-from"), sourceTo: $("source-to"),
  };
  // Formats Pillow reads on the server: anything else the browser can show is re-encoded as PNG.
  const SERVER_TYPES = /^image\/(png|jpeg|webp|bmp|tiff|gif)$/;
  const HOLE_COLOUR = "#ff285a";  // opaque in the mask; its red channel makes it a hole for the server's rule
  const HOLE_ALPHA = 0.55;        // how strongly the mask tints the image on screen
  // Memory cap of the history: the rounds' images, decoded (4 bytes a pixel) plus their PNG
  // files. 512 MiB keeps about 8 rounds of a 12 MP photo, hundreds of a 1 MP one.
  const HISTORY_BYTES = 512 * 2 ** 20;
  const ZOOM_MAX = 32;
  const FIT_MAX = 4;        // a small image is not blown up past 4x to fit
  const PAN_KEEP = 48;      // CSS px of the image that always stay in view
  const PERF_FRAMES = 2000; // frame records kept for window.csaPage.frames()

  const state = {
    name: "image",
    original: null,   // the picture first opened (kept for the hold-\ view)
    floor: null,      // the picture below the oldest history entry (the original until rounds fall off)
    history: [],      // [round, round, ..., op, op]: rounds first, then the current round's ops
    redo: [],         // {entry, mask}: undone entries, with the mask to restore when redoing a round
    maskOps: [],      // what the mask is drawn from (a restored round's ops, then new ones)
    erase: false,
    stroke: null,     // the stroke being painted
    pan: null,        // {x, y, vx, vy}: a pan drag in progress
    space: false, peek: false,
    busy: null,       // AbortController of the request in flight
    limits: null,
    methods: new Map(),
    view: { z: 1, x: 0, y: 0 },
    size: { w: 0, h: 0 },  // the stage in CSS px
  };
  const mask = document.createElement("canvas");
  const mctx = mask.getContext("2d");
  const vctx = el.view.getContext("2d");

  // --- status ------------------------------------------------------------------------
  function setStatus(text, isError = false) {
    el.status.textContent = text;
    el.status.classList.toggle("error", isError);
  }
  function setState(name) { document.body.dataset.state = name; }
  // Any action clears a stale error message (a new one may follow from the action itself).
  const MODIFIERS = new Set(["Shift", "Control", "Alt", "Meta"]);
  const act = (ev) => {
    if (ev && ev.type === "keydown" && MODIFIERS.has(ev.key)) return;
    if (el.status.classList.contains("error")) setStatus("");
  };
  document.addEventListener("pointerdown", act, true);
  document.addEventListener("keydown", act, true);
  document.addEventListener("change", act, true);
  document.addEventListener("wheel", act, { capture: true, passive: true });

  // --- pictures: decoded images with their file ----------------------------------------
  async function makePicture(blob) {
    let bitmap;
    try { bitmap = await createImageBitmap(blob); } catch (_) {
      throw new Error("the browser cannot read this file as an image");
    }
    return { bitmap, blob, url: null, w: bitmap.width, h: bitmap.height, bytes: bitmap.width * bitmap.height * 4 + blob.size };
  }
  function pictureUrl(p) { if (!p.url) p.url = URL.createObjectURL(p.blob); return p.url; }
  function release(p) {
    if (!p || p === state.original) return;
    if (p.url) URL.revokeObjectURL(p.url);
    p.bitmap.close();
    p.url = null;
  }

  // --- history -------------------------------------------------------------------------
  function lastRoundIndex() {
    for (let i = state.history.length - 1; i >= 0; i--) if (state.history[i].kind === "round") return i;
    return -1;
  }
  function base() {  // the picture the next round edits
    const i = lastRoundIndex();
    return i < 0 ? state.floor : state.history[i].picture;
  }
  function before() {  // the picture the last round started from (null: no round)
    const i = lastRoundIndex();
    if (i < 0) return null;
    for (let j = i - 1; j >= 0; j--) if (state.history[j].kind === "round") return state.history[j].picture;
    return state.floor;
  }
  function roundCount() { return lastRoundIndex() + 1; }
  function historyBytes() {
    let n = 0;
    for (const e of state.history) if (e.kind === "round") n += e.picture.bytes;
    for (const r of state.redo) if (r.entry.kind === "round") n += r.entry.picture.bytes;
    return n;
  }
  function dropRedo() {
    for (const r of state.redo) if (r.entry.kind === "round") release(r.entry.picture);
    state.redo = [];
  }
  function pushOp(op) {
    dropRedo();
    state.history.push(op); state.maskOps.push(op);
    updateButtons();
  }
  function pushRound(picture, method) {
    dropRedo();
    state.history.length = lastRoundIndex() + 1;  // the round's ops travel with it
    state.history.push({ kind: "round", picture, method, ops: state.maskOps });
    state.maskOps = [];
    // Over the budget: the oldest round becomes the floor (never the image being edited).
    while (historyBytes() > HISTORY_BYTES && lastRoundIndex() > 0) {
      if (state.floor !== state.original) release(state.floor);
      state.floor = state.history.shift().picture;
    }
    updateButtons();
  }
  function undo() {
    if (!state.history.length || state.stroke || state.busy) return;
    const entry = state.history.pop();
    state.redo.push({ entry, mask: state.maskOps });
    if (entry.kind === "round") state.maskOps = entry.ops.slice();
    else state.maskOps = state.maskOps.slice(0, -1);
    afterHistoryMove(entry);
  }
  function redo() {
    if (!state.redo.length || state.stroke || state.busy) return;
    const { entry, mask } = state.redo.pop();
    state.history.push(entry);
    state.maskOps = entry.kind === "round" ? mask : [...state.maskOps, entry];
    afterHistoryMove(entry);
  }
  function afterHistoryMove(entry) {
    replayMask();
    if (entry.kind === "round") showRound();
    updateButtons();
  }

  // --- the mask ------------------------------------------------------------------------
  function applyOp(op) {
    if (op.kind === "clear") { mctx.clearRect(0, 0, mask.width, mask.height); return; }
    if (op.kind === "file") { mctx.clearRect(0, 0, mask.width, mask.height); mctx.drawImage(op.canvas, 0, 0); return; }
    const p = op.points;
    for (let i = 0; i < p.length; i++) paintSegment(op, i ? p[i - 1] : null, p[i]);
  }
  // A stroke is painted, live and on replay, with the same calls: a dot at its start, then
  // one round-capped segment per pointer move. (One polyline would not overlap the
  // anti-aliased rims the same way, and an undo would bring back a slightly different mask.)
  function paintSegment(op, a, b) {
    mctx.save();
    mctx.globalCompositeOperation = op.erase ? "destination-out" : "source-over";
    mctx.fillStyle = mctx.strokeStyle = HOLE_COLOUR;
    mctx.beginPath();
    if (!a) { mctx.arc(b[0], b[1], op.width / 2, 0, 2 * Math.PI); mctx.fill(); }
    else {
      mctx.lineWidth = op.width; mctx.lineCap = "round";
      mctx.moveTo(a[0], a[1]); mctx.lineTo(b[0], b[1]); mctx.stroke();
    }
    mctx.restore();
  }
  function replayMask() {
    mctx.clearRect(0, 0, mask.width, mask.height);
    for (const op of state.maskOps) applyOp(op);
    invalidate();
  }
  function clearMask() {
    const ops = state.maskOps;
    if (!ops.length || ops[ops.length - 1].kind === "clear") return;
    pushOp({ kind: "clear" }); replayMask();
  }

  // Hole pixels (alpha >= 128, the server's threshold on the red channel sent): read back
  // through a canvas made for reading, once per Inpaint.
  function holePixels() {
    if (!mask.width) return 0;
    const c = document.createElement("canvas");
    c.width = mask.width; c.height = mask.height;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(mask, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) n++;
    c.width = c.height = 0;
    return n;
  }

  function maskPng() {  // the hole colour on black, at the image's resolution
    const out = document.createElement("canvas");
    out.width = mask.width; out.height = mask.height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(mask, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  async function openMaskFile(file) {
    const pic = base();
    if (!pic) { setStatus("open an image first, then its mask", true); return; }
    let img;
    try { img = await makePicture(file); } catch (e) { setStatus(e.message, true); return; }
    if (img.w !== pic.w || img.h !== pic.h) {
      img.bitmap.close();
      setStatus(`the mask is ${img.w}×${img.h} but the image is ${pic.w}×${pic.h}: use a mask of the image's size`, true);
      return;
    }
    // The server's rule: a pixel is hole when its brightest colour channel is >= 128.
    const c = document.createElement("canvas");
    c.width = img.w; c.height = img.h;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img.bitmap, 0, 0);
    img.bitmap.close();
    const px = ctx.getImageData(0, 0, c.width, c.height);
    const d = px.data, invert = el.maskInvert.checked;
    for (let i = 0; i < d.length; i += 4) {
      const hole = Math.max(d[i], d[i + 1], d[i + 2]) >= 128;
      d[i] = 0xff; d[i + 1] = 0x28; d[i + 2] = 0x5a;  // HOLE_COLOUR
      d[i + 3] = hole !== invert ? 255 : 0;
    }
    ctx.putImageData(px, 0, 0);
    pushOp({ kind: "file", canvas: c }); replayMask();
    setStatus(`mask loaded from ${file.name}; paint or erase to adjust it.`);
  }

  // --- the view: zoom and pan ----------------------------------------------------------
  function fitZoom() {
    const p = base();
    if (!p) return 1;
    return Math.min((state.size.w - 16) / p.w, (state.size.h - 16) / p.h, FIT_MAX);
  }
  function zoomMin() { return Math.min(fitZoom(), 1) / 4; }
  function clampPan() {
    const p = base(), v = state.view;
    if (!p) return;
    const iw = p.w * v.z, ih = p.h * v.z, W = state.size.w, H = state.size.h;
    const keepX = Math.min(PAN_KEEP, iw), keepY = Math.min(PAN_KEEP, ih);
    v.x = Math.min(W - keepX, Math.max(keepX - iw, v.x));
    v.y = Math.min(H - keepY, Math.max(keepY - ih, v.y));
  }
  function fitView() {
    const p = base(), v = state.view;
    if (!p) return;
    v.z = fitZoom();
    v.x = (state.size.w - p.w * v.z) / 2; v.y = (state.size.h - p.h * v.z) / 2;
    viewChanged();
  }
  function zoomTo(z, cx = state.size.w / 2, cy = state.size.h / 2) {  // keeps the image point under (cx, cy)
    const v = state.view;
    if (!base()) return;
    const nz = Math.min(ZOOM_MAX, Math.max(zoomMin(), z));
    v.x = cx - ((cx - v.x) * nz) / v.z; v.y = cy - ((cy - v.y) * nz) / v.z; v.z = nz;
    viewChanged();
  }
  // Buttons and keys step through powers of sqrt(2) (50%, 71%, 100%, 141%, 200%, ...).
  function zoomStep(dir) {
    const k = Math.log2(state.view.z) * 2;
    zoomTo(2 ** ((dir > 0 ? Math.floor(k + 1e-6) + 1 : Math.ceil(k - 1e-6) - 1) / 2));
  }
  function viewChanged() {
    clampPan();
    el.zoomValue.textContent = `${Math.round(state.view.z * 100)}%`;
    document.body.dataset.zoom = String(state.view.z);
    updateCursor();
    el.sourceFrom.hidden = el.sourceTo.hidden = true;  // placed for the old view; the next hover places them again
    invalidate();
  }
  function toImage(sx, sy) {
    const v = state.view;
    return [(sx - v.x) / v.z, (sy - v.y) / v.z];
  }
  function stagePoint(ev) {
    const r = el.view.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top];
  }
  function resizeStage() {
    const w = el.stage.clientWidth, h = el.stage.clientHeight, dpr = window.devicePixelRatio || 1;
    if (!w || !h) return;
    const old = state.size, v = state.view;
    if (old.w) { v.x += (w - old.w) / 2; v.y += (h - old.h) / 2; }  // keep the centre in place
    state.size = { w, h };
    el.view.width = Math.round(w * dpr); el.view.height = Math.round(h * dpr);
    if (base()) viewChanged();
  }
  new ResizeObserver(resizeStage).observe(el.stage);

  // --- drawing ---------------------------------------------------------------------------
  let dirty = null, dirtyAll = false, frameRequest = 0, inputWork = 0;
  const frames = [];
  function invalidate(rect) {  // rect in CSS px of the stage; none: the whole stage
    if (!rect) dirtyAll = true;
    else if (!dirty) dirty = { ...rect };
    else {
      const x0 = Math.min(dirty.x, rect.x), y0 = Math.min(dirty.y, rect.y);
      dirty = { x: x0, y: y0, w: Math.max(dirty.x + dirty.w, rect.x + rect.w) - x0,
                h: Math.max(dirty.y + dirty.h, rect.y + rect.h) - y0 };
    }
    if (!frameRequest) frameRequest = requestAnimationFrame(frame);
  }
  function frame(ts) {
    frameRequest = 0;
    const t0 = performance.now();
    const area = render(dirtyAll ? null : dirty);
    frames.push({ t: ts, ms: inputWork + performance.now() - t0, area, full: dirtyAll });
    if (frames.length > PERF_FRAMES) frames.splice(0, frames.length - PERF_FRAMES);
    dirty = null; dirtyAll = false; inputWork = 0;
  }

  // Draws the image part of `rect` (CSS px; null: all of the stage); returns its area in CSS px².
  function render(rect) {
    const W = state.size.w, H = state.size.h, dpr = el.view.width / (W || 1);
    let x0 = 0, y0 = 0, x1 = W, y1 = H;
    if (rect) {
      x0 = Math.max(0, rect.x); y0 = Math.max(0, rect.y);
      x1 = Math.min(W, rect.x + rect.w); y1 = Math.min(H, rect.y + rect.h);
      if (x1 <= x0 || y1 <= y0) return 0;
    }
    // Whole device pixels, so a partial redraw meets the pixels around it without a seam.
    const dx0 = Math.floor(x0 * dpr), dy0 = Math.floor(y0 * dpr);
    const dx1 = Math.ceil(x1 * dpr), dy1 = Math.ceil(y1 * dpr);
    const ctx = vctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.save();
    ctx.beginPath(); ctx.rect(dx0, dy0, dx1 - dx0, dy1 - dy0); ctx.clip();
    ctx.clearRect(dx0, dy0, dx1 - dx0, dy1 - dy0);
    const pic = base();
    if (pic) {
      const v = state.view, s = dpr * v.z;
      ctx.setTransform(s, 0, 0, s, v.x * dpr, v.y * dpr);  // image pixels from here on
      // The image pixels under the clip (2 more each side, so smoothing has its neighbours).
      const ix0 = Math.max(0, Math.floor((x0 - v.x) / v.z) - 2), iy0 = Math.max(0, Math.floor((y0 - v.y) / v.z) - 2);
      const ix1 = Math.min(pic.w, Math.ceil((x1 - v.x) / v.z) + 2), iy1 = Math.min(pic.h, Math.ceil((y1 - v.y) / v.z) + 2);
      if (ix1 > ix0 && iy1 > iy0) {
        const part = (src) => ctx.drawImage(src, ix0, iy0, ix1 - ix0, iy1 - iy0, ix0, iy0, ix1 - ix0, iy1 - iy0);
        ctx.imageSmoothingEnabled = v.z < 2;  // from 200% on, image pixels show as squares
        ctx.imageSmoothingQuality = "medium";
        const old = before();
        if (state.peek) part(state.original.bitmap);
        else {
          part(pic.bitmap);
          const split = splitX();
          if (old && split !== null && split > ix0) {
            ctx.save();
            ctx.beginPath(); ctx.rect(0, 0, split, pic.h); ctx.clip();
            part(old.bitmap);
            ctx.restore();
          }
          ctx.globalAlpha = HOLE_ALPHA;
          ctx.imageSmoothingQuality = "low";
          part(mask);
        }
      }
    }
    ctx.restore();
    if (!rect) placeOverlays();
    return (x1 - x0) * (y1 - y0);
  }

  // The before / after split, in image x (null: no comparison shown). It sits in the part
  // of the image on screen, so it stays in view at any zoom.
  function splitX() {
    if (!before() || state.peek) return null;
    const pic = base(), v = state.view;
    const a = Math.max(0, v.x), b = Math.min(state.size.w, v.x + pic.w * v.z);
    if (b <= a) return null;
    const f = 1 - Number(el.compare.value) / 100;
    if (f <= 0) return null;
    return (a + (b - a) * f - v.x) / v.z;
  }
  function placeOverlays() {
    const split = splitX(), v = state.view;
    const sx = split === null ? null : v.x + split * v.z;
    const showSplit = sx !== null && sx > 1 && sx < state.size.w - 1;
    el.split.hidden = !showSplit;
    el.labelBefore.hidden = !(showSplit && sx > 80);
    el.labelAfter.hidden = !(split !== null && state.size.w - (sx || 0) > 80);
    if (showSplit) {
      el.split.style.left = `${sx}px`;
      el.labelBefore.style.left = `${sx - 10 - el.labelBefore.offsetWidth}px`;
      el.labelAfter.style.left = `${sx + 10}px`;
    } else el.labelAfter.style.left = "10px";
    el.labelOriginal.hidden = !state.peek;
  }

  // --- the brush outline -------------------------------------------------------------------
  let cursorAt = null;
  function updateCursor() {
    const c = el.cursor;
    if (!cursorAt || !base() || state.space || state.pan || state.peek) { c.hidden = true; return; }
    const d = brushSize() * state.view.z;
    c.hidden = false;
    c.classList.toggle("eraser", state.erase);
    c.classList.toggle("tiny", d < 6);
    c.style.width = c.style.height = `${d}px`;
    c.style.transform = `translate(${cursorAt[0] - d / 2}px, ${cursorAt[1] - d / 2}px)`;
  }

  // --- pointer input ---------------------------------------------------------------------
  function brushSize() { return Number(el.size.value); }

  el.view.addEventListener("pointerdown", (ev) => {
    if (!base()) return;
    const p = stagePoint(ev);
    if (ev.button === 1 || (ev.button === 0 && state.space)) {  // pan
      ev.preventDefault();
      el.view.setPointerCapture(ev.pointerId);
      state.pan = { x: p[0], y: p[1], vx: state.view.x, vy: state.view.y };
      el.stage.classList.add("grabbing");
      updateCursor();
      return;
    }
    if (ev.button !== 0) return;
    if (state.busy) { setStatus("Wait for the result, or cancel it (Esc) to paint again."); return; }
    ev.preventDefault();
    el.view.setPointerCapture(ev.pointerId);
    if (before() && Number(el.compare.value) < 100) { el.compare.value = "100"; invalidate(); }
    const t0 = performance.now();
    state.stroke = { kind: "stroke", erase: state.erase, width: brushSize(), points: [toImage(...p)] };
    paintSegment(state.stroke, null, state.stroke.points[0]);
    invalidate(segmentRect(state.stroke.points[0], state.stroke.points[0], state.stroke.width));
    inputWork += performance.now() - t0;
  });

  // The screen rectangle (CSS px) a segment of the given width touches, anti-aliased rim included.
  function segmentRect(a, b, width) {
    const v = state.view, r = (width / 2 + 2) * v.z + 2;
    const ax = v.x + a[0] * v.z, ay = v.y + a[1] * v.z, bx = v.x + b[0] * v.z, by = v.y + b[1] * v.z;
    return { x: Math.min(ax, bx) - r, y: Math.min(ay, by) - r, w: Math.abs(ax - bx) + 2 * r, h: Math.abs(ay - by) + 2 * r };
  }

  el.view.addEventListener("pointermove", (ev) => {
    const p = stagePoint(ev);
    cursorAt = p;
    if (state.pan) {
      state.view.x = state.pan.vx + p[0] - state.pan.x; state.view.y = state.pan.vy + p[1] - state.pan.y;
      viewChanged();
      return;
    }
    const s = state.stroke;
    if (s) {
      const t0 = performance.now();
      const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
      for (const e of events.length ? events : [ev]) {
        const q = toImage(...stagePoint(e)), last = s.points[s.points.length - 1];
        if (Math.hypot(q[0] - last[0], q[1] - last[1]) * state.view.z < 0.5) continue;  // under half a screen pixel
        s.points.push(q);
        paintSegment(s, last, q);
        invalidate(segmentRect(last, q, s.width));
      }
      inputWork += performance.now() - t0;
    }
    updateCursor();
    showSourceAt(s || state.pan ? null : toImage(...p));
  });
  const endDrag = () => {
    if (state.pan) { state.pan = null; el.stage.classList.remove("grabbing"); updateCursor(); }
    if (state.stroke) { const s = state.stroke; state.stroke = null; pushOp(s); }
  };
  el.view.addEventListener("pointerup", endDrag);
  el.view.addEventListener("pointercancel", endDrag);
  el.view.addEventListener("pointerleave", () => { cursorAt = null; updateCursor(); showSourceAt(null); });
  el.view.addEventListener("auxclick", (ev) => ev.preventDefault());  // no middle-click paste / autoscroll

  el.stage.addEventListener("wheel", (ev) => {
    if (!base()) return;
    ev.preventDefault();
    const unit = ev.deltaMode === 1 ? 16 : ev.deltaMode === 2 ? state.size.h : 1;  // lines, pages, pixels
    const p = stagePoint(ev);
    zoomTo(state.view.z * Math.exp(-ev.deltaY * unit * 0.0015), p[0], p[1]);
  }, { passive: false });

  // --- tools -------------------------------------------------------------------------------
  function setTool(erase) {
    state.erase = erase;
    el.brush.classList.toggle("active", !erase); el.brush.setAttribute("aria-pressed", String(!erase));
    el.eraser.classList.toggle("active", erase); el.eraser.setAttribute("aria-pressed", String(erase));
    updateCursor();
  }
  function setSize(v) {
    const min = Number(el.size.min), max = Number(el.size.max);
    el.size.value = String(Math.round(Math.min(max, Math.max(min, v))));
    el.sizeValue.textContent = `${el.size.value} px`;
    updateCursor();
  }
  function updateButtons() {
    const has = !!base(), ops = state.maskOps, busy = !!state.busy;
    el.undo.disabled = busy || !state.history.length;
    el.redo.disabled = busy || !state.redo.length;
    el.clear.disabled = busy || !ops.length || ops[ops.length - 1].kind === "clear";
    el.inpaint.disabled = !has || busy;
    el.inpaint.hidden = busy;
    el.cancel.hidden = !busy;
    el.zoomBar.hidden = !has;
  }
  function setPeek(on) {
    if (on === state.peek || !state.original) return;
    state.peek = on;
    document.body.dataset.showing = on ? "original" : "current";
    el.labelOriginal.hidden = !on;
    updateCursor(); invalidate();
  }

  el.brush.addEventListener("click", () => setTool(false));
  el.eraser.addEventListener("click", () => setTool(true));
  el.size.addEventListener("input", () => setSize(Number(el.size.value)));
  el.undo.addEventListener("click", undo);
  el.redo.addEventListener("click", redo);
  el.clear.addEventListener("click", clearMask);
  el.zoomIn.addEventListener("click", () => zoomStep(1));
  el.zoomOut.addEventListener("click", () => zoomStep(-1));
  el.zoomFit.addEventListener("click", fitView);
  el.zoom1.addEventListener("click", () => zoomTo(1));
  el.compare.addEventListener("input", () => invalidate());
  el.imageInput.addEventListener("change", () => {
    const f = el.imageInput.files[0]; el.imageInput.value = "";
    if (f) openImage(f, f.name);
  });
  el.maskInput.addEventListener("change", () => {
    const f = el.maskInput.files[0]; el.maskInput.value = "";
    if (f) openMaskFile(f);
  });
  window.addEventListener("blur", () => { state.space = false; el.stage.classList.remove("panning"); setPeek(false); });

  const typing = (t) => t instanceof HTMLSelectElement || (t instanceof HTMLInputElement && t.type !== "range" && t.type !== "checkbox");
  document.addEventListener("keydown", (ev) => {
    if (typing(ev.target)) return;
    const mod = ev.ctrlKey || ev.metaKey, key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (key === " ") {  // hold to pan; never a click on a focused button, never a page scroll
      ev.preventDefault();
      if (!state.space) { state.space = true; el.stage.classList.add("panning"); updateCursor(); }
      return;
    }
    if (key === "Escape") { cancel(); return; }
    if (mod && key === "z" && !ev.shiftKey) { ev.preventDefault(); undo(); }
    else if (mod && (key === "y" || (key === "z" && ev.shiftKey))) { ev.preventDefault(); redo(); }
    else if (mod && key === "Enter") { ev.preventDefault(); inpaint(); }
    else if (mod || ev.altKey) return;
    else if (key === "\\") { ev.preventDefault(); setPeek(true); }
    else if (key === "[") setSize(brushSize() * 0.8 - 1);
    else if (key === "]") setSize(brushSize() * 1.25 + 1);
    else if (key === "b") setTool(false);
    else if (key === "e") setTool(true);
    else if (key === "+" || key === "=") zoomStep(1);
    else if (key === "-" || key === "_") zoomStep(-1);
    else if (key === "0") fitView();
    else if (key === "1") zoomTo(1);
  });
  document.addEventListener("keyup", (ev) => {
    if (ev.key === " ") {
      if (!typing(ev.target)) ev.preventDefault();
      state.space = false; el.stage.classList.remove("panning"); updateCursor();
    } else if (ev.key === "\\") setPeek(false);
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

  // --- opening an image ----------------------------------------------------------------
  async function openImage(blob, name) {
    if (!blob || !(blob.type || "").startsWith("image/")) {
      setStatus(`${name || "that"} is not an image: open a PNG, JPEG or WebP file`, true);
      return;
    }
    if (state.busy) cancel();
    let pic;
    try { pic = await makePicture(blob); } catch (e) { setStatus(e.message, true); return; }
    if (!SERVER_TYPES.test(blob.type)) pic.blob = await reencodePng(pic.bitmap);
    dropRedo();
    for (const e of state.history) if (e.kind === "round") release(e.picture);
    if (state.floor !== state.original) release(state.floor);
    const old = state.original;
    state.original = null; release(old);
    state.original = state.floor = pic;
    state.history = []; state.maskOps = [];
    state.name = (name || "image").replace(/\.[^.]+$/, "") || "image";
    mask.width = pic.w; mask.height = pic.h;
    el.dropzone.hidden = true;
    setSize(Math.max(4, 24 / fitZoom()));  // about 24 screen pixels when the whole image fits
    fitView(); showRound(); updateButtons();
    setState("ready");
    setStatus(`${state.name}: ${pic.w}×${pic.h}. Paint over what should go, then press Inpaint.`);
  }

  function reencodePng(bitmap) {
    const c = document.createElement("canvas");
    c.width = bitmap.width; c.height = bitmap.height;
    c.getContext("2d").drawImage(bitmap, 0, 0);
    return new Promise((resolve) => c.toBlob(resolve, "image/png"));
  }

  // --- rounds --------------------------------------------------------------------------
  // The result bar follows the last round: compare it with the image it started from, download it.
  function showRound() {
    const i = lastRoundIndex(), n = roundCount();
    el.resultBar.hidden = i < 0;
    if (i < 0) { el.download.removeAttribute("href"); invalidate(); return; }
    const entry = state.history[i];
    el.download.href = pictureUrl(entry.picture);
    el.download.download = `${state.name}-inpainted.png`;  // after any number of rounds
    el.roundNote.textContent = `round ${n}${n > 1 ? ` of ${n}` : ""} · ${entry.method} · Ctrl+Z goes back a round`;
    invalidate();
  }

  function cancel() {
    if (state.busy) state.busy.abort();
  }

  async function inpaint() {
    const pic = base();
    if (!pic || state.busy) return;
    if (state.stroke) endDrag();
    if (!holePixels()) { setStatus("paint over the part to remove first (or load a mask file)", true); return; }
    const lim = state.limits;
    if (lim && pic.blob.size > lim.max_upload_bytes) {
      setStatus(`the image file is ${(pic.blob.size / 2 ** 20).toFixed(1)} MiB, over the server's limit of ` +
                `${(lim.max_upload_bytes / 2 ** 20).toFixed(0)} MiB: restart it with a larger --max-upload-mb`, true);
      return;
    }
    const method = el.method.value || "csa";
    const controller = new AbortController();
    const stateBefore = document.body.dataset.state, statusBefore = el.status.textContent;
    state.busy = controller; updateButtons(); setState("busy");
    const t0 = performance.now();
    const tick = () => setStatus(`Inpainting with ${method}… ${((performance.now() - t0) / 1000).toFixed(1)} s (Esc cancels)`);
    tick();
    const timer = setInterval(tick, 100);
    try {
      const form = new FormData();
      form.append("image", pic.blob, `${state.name}${extensionOf(pic.blob.type)}`);
      form.append("mask", await maskPng(), "mask.png");
      form.append("method", method);
      if (el.strategy.value) form.append("strategy", el.strategy.value);
      const explain = el.showSources.checked && method === "csa";
      const res = await fetch(`${API}/${explain ? "explain" : "inpaint"}`,
                              { method: "POST", body: form, signal: controller.signal });
      if (!res.ok) {
        let detail = `${res.status} ${res.statusText}`;
        try { const body = await res.json(); detail = body.detail || detail; } catch (_) { /* not JSON */ }
        throw new Error(detail);
      }
      let warning = res.headers.get("X-Csa-Warning"), sources = null, blob;
      if (explain) {  // JSON: the result as base64 PNG plus the cell maps (see /docs, ExplainBody)
        sources = await res.json();
        blob = await (await fetch(`data:image/png;base64,${sources.result_png}`)).blob();
        warning = sources.warnings.join("; ") || null;
      } else blob = await res.blob();
      const result = await makePicture(blob);
      if (controller.signal.aborted) { release(result); throw new DOMException("cancelled", "AbortError"); }
      if (sources) sources.hole = holeBits();  // before the new round clears the mask
      pushRound(result, method);
      state.history[lastRoundIndex()].sources = sources;
      replayMask();  // a new round starts with an empty mask
      el.compare.value = "50";
      showRound();
      setState("done");
      const n = roundCount();
      setStatus(`Round ${n} done with ${method} in ${((performance.now() - t0) / 1000).toFixed(2)} s. ` +
                `Drag the slider to compare, paint more to keep going${warning ? ` (${warning})` : ""}.`);
    } catch (e) {
      if (e.name === "AbortError") {
        setState(stateBefore);
        setStatus(statusBefore ? `Cancelled. ${statusBefore}` : "Cancelled.");
      } else {
        setState("error");
        setStatus(`Inpainting failed: ${e.message}`, true);
      }
    } finally {
      clearInterval(timer);
      state.busy = null; updateButtons();
    }
  }
  el.inpaint.addEventListener("click", inpaint);
  el.cancel.addEventListener("click", cancel);

  // --- show sources: map a hovered image pixel to its source, as ExplainBody describes ---------
  function mirror(v, n) {  // reflection about the first and last index, any distance
    if (n === 1) return 0;
    const period = 2 * (n - 1);
    v = ((v % period) + period) % period;
    return v > n - 1 ? period - v : v;
  }
  function sourceOf(frames, y, x) {  // [row, col] of the source, "known" (convolution only) or null
    for (const f of frames) {
      const [top, left, bottom, right] = f.box;
      if (y < top || y >= bottom || x < left || x >= right) continue;
      const cy = Math.floor(Math.min(Math.max(Math.floor(f.offset[0] + (y - top + 0.5) * f.fit[0] / (bottom - top)), 0), f.canvas[0] - 1) / f.cell);
      const cx = Math.floor(Math.min(Math.max(Math.floor(f.offset[1] + (x - left + 0.5) * f.fit[1] / (right - left)), 0), f.canvas[1] - 1) / f.cell);
      const s = f.cells[cy * f.grid[1] + cx];
      if (s < 0) return "known";
      const out = [];
      for (const [axis, idx] of [[0, Math.floor(s / f.grid[1])], [1, s % f.grid[1]]]) {
        const fit = mirror(idx * f.cell + f.cell / 2 - 0.5 - f.offset[axis], f.fit[axis]);
        const start = f.box[axis], stop = f.box[axis + 2];
        out.push(start + (fit + 0.5) * (stop - start) / f.fit[axis] - 0.5);
      }
      return out;
    }
    return null;
  }
  function showSourceAt(point) {
    const i = lastRoundIndex(), round = i < 0 ? null : state.history[i];
    const info = point && el.showSources.checked && round && !state.peek ? round.sources : null;
    let src = null, x = 0, y = 0;
    if (info) {
      x = Math.floor(point[0]); y = Math.floor(point[1]);
      const [h, w] = info.size;
      if (x >= 0 && y >= 0 && x < w && y < h && info.hole[y * w + x]) src = sourceOf(info.frames, y, x);
      if (src === "known") {
        setStatus(`pixel (${x}, ${y}): its 8x8 cell counts as known to the CSA layer (filled by convolution only)`);
        src = null;
      } else if (src) {
        setStatus(`pixel (${x}, ${y}) came from around (${Math.round(src[1])}, ${Math.round(src[0])}): ` +
                  "the CSA layer's choice for its 8x8 cell (the decoder shapes every pixel too)");
      }
    }
    el.sourceFrom.hidden = el.sourceTo.hidden = !src;
    if (!src) return;
    const v = state.view;
    el.sourceFrom.style.transform = `translate(${v.x + (x + 0.5) * v.z}px, ${v.y + (y + 0.5) * v.z}px)`;
    el.sourceTo.style.transform = `translate(${v.x + (src[1] + 0.5) * v.z}px, ${v.y + (src[0] + 0.5) * v.z}px)`;
  }
  function holeBits() {  // 1 where the mask being sent is hole (the same alpha rule as holePixels)
    const c = document.createElement("canvas");
    c.width = mask.width; c.height = mask.height;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(mask, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    const bits = new Uint8Array(c.width * c.height);
    for (let i = 0; i < bits.length; i++) bits[i] = d[4 * i + 3] >= 128 ? 1 : 0;
    c.width = c.height = 0;
    return bits;
  }
  el.showSources.addEventListener("change", () => showSourceAt(null));

  function extensionOf(type) {
    const m = /^image\/([a-z]+)/.exec(type || "");
    return m ? `.${m[1] === "jpeg" ? "jpg" : m[1]}` : ".png";
  }

  // --- methods and the model -------------------------------------------------------------
  function showStrategies() {
    const m = state.methods.get(el.method.value);
    const list = m ? m.strategies : [];
    el.strategy.replaceChildren();
    const add = (value, text, title) => {
      const o = document.createElement("option");
      o.value = value; o.textContent = text; o.title = title || "";
      el.strategy.append(o);
    };
    if (list.length > 1) {  // "auto" sends no strategy: the server picks one by image size
      add("", "auto", m.default_strategy);
      for (const s of list) add(s, s);
    } else add("", list.length ? `${list[0]} (full resolution)` : "none", m ? m.default_strategy : "");
    el.strategy.disabled = list.length <= 1;
    el.strategy.title = list.length > 1 ? `how large images are handled; auto: ${m.default_strategy}` :
      "this method always runs on the whole image at full resolution";
    el.methodNote.textContent = m ? m.description : "";
    el.methodNote.title = el.methodNote.textContent;
  }
  el.method.addEventListener("change", showStrategies);

  fetch(`${API}/methods`).then((r) => r.json()).then((body) => {
    el.method.replaceChildren();
    for (const m of body.methods) {
      state.methods.set(m.id, m);
      const o = document.createElement("option");
      o.value = o.textContent = m.id; o.title = m.description;
      el.method.append(o);
    }
    el.method.value = body.default;
    showStrategies();
  }).catch(() => { el.methodNote.textContent = "the method list did not load: csa is used"; });

  fetch(`${API}/model`).then((r) => r.json()).then((info) => {
    state.limits = info.limits || null;
    const params = info.parameters ? ` · ${(info.parameters / 1e6).toFixed(1)} M parameters` : "";
    el.modelName.textContent = `model: ${info.name || "unnamed"}${params}`;
  }).catch(() => { el.modelName.textContent = "model: unavailable"; });

  // Read-only hooks for tests/test_server_browser.py and benchmarks/page.py.
  window.csaPage = Object.freeze({
    view: () => ({ zoom: state.view.z, x: state.view.x, y: state.view.y, fit: fitZoom(), ...state.size }),
    history: () => ({ entries: state.history.length, rounds: roundCount(), redo: state.redo.length,
                      bytes: historyBytes(), budget: HISTORY_BYTES }),
    frames: () => frames.slice(),
    holePixels,
    maskPng,
  });

  setSize(brushSize());
  updateButtons();
})();
