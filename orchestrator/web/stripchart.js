// Strip charts on a canvas, our own code (no library): a ring buffer of
// (time, value) points per series, drawn over a sliding time window. When a
// window holds more points than the chart has pixel columns, each column is
// drawn as the min-max of its points, so a 10-minute window of 100 records
// a second (60,000 points) costs one pass and a few hundred line segments.

/** A fixed-capacity ring of (time ms, value) points, times non-decreasing. */
export class Series {
  constructor(capacity) {
    this.t = new Float64Array(capacity);
    this.v = new Float64Array(capacity);
    this.cap = capacity;
    this.start = 0;
    this.len = 0;
  }

  push(t, v) {
    const i = (this.start + this.len) % this.cap;
    this.t[i] = t;
    this.v[i] = v;
    if (this.len < this.cap) this.len++;
    else this.start = (this.start + 1) % this.cap;
  }

  clear() { this.start = 0; this.len = 0; }

  /** The k-th oldest point's index in the arrays. */
  at(k) { return (this.start + k) % this.cap; }

  /** The first k whose time is >= t (binary search). */
  firstFrom(t) {
    let lo = 0, hi = this.len;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.t[this.at(mid)] < t) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
}

/** A gap longer than this (ms) between two points breaks the line. */
const GAP_MS = 2000;

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** "Nice" tick step for a span: 1, 2 or 5 times a power of ten. */
function niceStep(span, ticks) {
  const raw = span / Math.max(1, ticks);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

function label(v, step) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step))));
  return v.toFixed(digits);
}

export class StripChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
  }

  /**
   * Draws `series` for the window (tEnd - windowMs, tEnd] in `color`;
   * returns how many points lie in the window, with their min and max.
   */
  draw(series, tEnd, windowMs, color) {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = w / dpr, H = h / dpr;
    const left = 64, right = 8, top = 6, bottom = 18;
    const pw = W - left - right, ph = H - top - bottom;
    ctx.clearRect(0, 0, W, H);
    const fg = css('--muted'), grid = css('--grid');
    ctx.font = '11px ui-monospace, "DejaVu Sans Mono", monospace';

    const tStart = tEnd - windowMs;
    const first = series.firstFrom(tStart);
    let lo = Infinity, hi = -Infinity, n = 0;
    for (let k = first; k < series.len; k++) {
      const i = series.at(k);
      if (series.t[i] > tEnd) break;
      const v = series.v[i];
      if (!Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
      n++;
    }
    let yLo = lo, yHi = hi;
    if (n === 0) { yLo = 0; yHi = 1; } else if (yLo === yHi) {
      const d = Math.abs(yLo) * 0.1 || 1;
      yLo -= d; yHi += d;
    } else {
      const pad = (yHi - yLo) * 0.06;
      yLo -= pad; yHi += pad;
    }
    const x = (t) => left + ((t - tStart) / windowMs) * pw;
    const y = (v) => top + (1 - (v - yLo) / (yHi - yLo)) * ph;

    // Grid and labels.
    ctx.strokeStyle = grid;
    ctx.fillStyle = fg;
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    const yStep = niceStep(yHi - yLo, 4);
    ctx.beginPath();
    for (let v = Math.ceil(yLo / yStep) * yStep; v <= yHi; v += yStep) {
      const py = Math.round(y(v)) + 0.5;
      ctx.moveTo(left, py); ctx.lineTo(left + pw, py);
      ctx.fillText(label(Math.abs(v) < yStep / 1e6 ? 0 : v, yStep), left - 6, py);
    }
    const tStep = niceStep(windowMs / 1000, 6) * 1000;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let back = 0; back <= windowMs + 1e-6; back += tStep) {
      const px = Math.round(x(tEnd - back)) + 0.5;
      ctx.moveTo(px, top); ctx.lineTo(px, top + ph);
      const s = back / 1000;
      const text = back === 0 ? 'now' : `-${s >= 60 && s % 60 === 0 ? s / 60 + 'min' : +s.toFixed(3) + 's'}`;
      ctx.fillText(text, Math.min(Math.max(px, left + 14), left + pw - 12), top + ph + 3);
    }
    ctx.stroke();

    // The data.
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, pw, ph);
    ctx.clip();
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 1.5;
    ctx.lineJoin = 'round';
    ctx.beginPath();
    let lastT = -Infinity, lastX = 0, lastY = 0;
    if (n > pw * 2) {
      // Min-max per pixel column.
      let col = -1, cMin = 0, cMax = 0, cFirst = 0, cLast = 0;
      const flush = () => {
        if (col < 0) return;
        ctx.lineTo(col, y(cFirst));
        ctx.lineTo(col, y(cMin));
        ctx.lineTo(col, y(cMax));
        ctx.lineTo(col, y(cLast));
      };
      for (let k = first; k < series.len; k++) {
        const i = series.at(k);
        const t = series.t[i], v = series.v[i];
        if (t > tEnd) break;
        if (!Number.isFinite(v)) continue;
        const px = Math.floor(x(t)) + 0.5;
        if (t - lastT > GAP_MS) {
          flush();
          col = -1;
          ctx.moveTo(px, y(v));
        }
        if (px !== col) {
          flush();
          col = px; cMin = v; cMax = v; cFirst = v;
        } else {
          if (v < cMin) cMin = v;
          if (v > cMax) cMax = v;
        }
        cLast = v;
        lastT = t; lastX = px; lastY = y(v);
      }
      flush();
    } else {
      for (let k = first; k < series.len; k++) {
        const i = series.at(k);
        const t = series.t[i], v = series.v[i];
        if (t > tEnd) break;
        if (!Number.isFinite(v)) continue;
        const px = x(t), py = y(v);
        if (t - lastT > GAP_MS) ctx.moveTo(px, py); else ctx.lineTo(px, py);
        lastT = t; lastX = px; lastY = py;
      }
    }
    ctx.stroke();
    if (n > 0) {
      ctx.beginPath();
      ctx.arc(lastX, lastY, 2.5, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.restore();
    return { points: n, min: lo, max: hi };
  }
}
