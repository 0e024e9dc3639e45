// Chapter 2's live demo: DRAW's read with attention, computed in the page (no model). The grid
// centres are (2.7), mu_i = g + (i - N/2 - 0.5) delta, the Gaussian filters (2.8) are normalised
// to sum 1 per row, and the read (2.10) is gamma F_Y x F_X^T, as attn_course.draw computes them.
import { element, heatmap, slider, start } from "./live.js";

const SCALE = 8;
const EPS = 1e-8; // as in attn_course.draw.filterbank: a row wholly off the image stays at zero

export function filterbank(g, delta, sigma2, N, size) {
  const F = new Float64Array(N * size);
  for (let i = 1; i <= N; i++) {
    const mu = g + (i - N / 2 - 0.5) * delta;
    let sum = 0;
    for (let a = 1; a <= size; a++) {
      const value = Math.exp(-((a - mu) ** 2) / (2 * sigma2));
      F[(i - 1) * size + a - 1] = value;
      sum += value;
    }
    for (let a = 0; a < size; a++) F[(i - 1) * size + a] /= sum + EPS;
  }
  return F;
}

export function read(x, params, A, B) { // x (B rows x A columns) -> gamma F_Y x F_X^T, N x N
  const { g_X, g_Y, delta, sigma2, gamma, N } = params;
  const F_X = filterbank(g_X, delta, sigma2, N, A);
  const F_Y = filterbank(g_Y, delta, sigma2, N, B);
  const rows = new Float64Array(N * A); // F_Y x
  for (let i = 0; i < N; i++) {
    for (let b = 0; b < B; b++) {
      const f = F_Y[i * B + b];
      if (f === 0) continue;
      for (let a = 0; a < A; a++) rows[i * A + a] += f * x[b * A + a];
    }
  }
  const patch = new Float64Array(N * N);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let a = 0; a < A; a++) s += rows[i * A + a] * F_X[j * A + a];
      patch[i * N + j] = gamma * s;
    }
  }
  return patch;
}

start("filterbank", async (app, demos, block) => {
  const { A, B } = demos.filterbank;
  const first = demos.filterbank.cases[0];
  const params = { g_X: first.g_X, g_Y: first.g_Y, delta: first.delta, sigma2: first.sigma2, gamma: first.gamma,
                   N: first.N };
  let x = Float64Array.from(demos.ram.digits[demos.filterbank.digit].flat(), (v) => v / 255);

  const picker = element("p", {}, "Digit: ");
  demos.ram.digits.forEach((digit, d) => {
    const button = element("button", { type: "button", "data-digit": d, text: String(demos.ram.labels[d]) });
    button.addEventListener("click", () => { x = Float64Array.from(digit.flat(), (v) => v / 255); draw(); });
    picker.append(button, " ");
  });
  const controls = element("p", { class: "live-filterbank-controls" });
  const ranges = {
    g_X: { min: 1, max: A, step: 0.5 }, g_Y: { min: 1, max: B, step: 0.5 }, delta: { min: 0.1, max: 8, step: 0.1 },
    sigma2: { min: 0.1, max: 16, step: 0.1 }, gamma: { min: 0.1, max: 3, step: 0.1 }, N: { min: 2, max: 16, step: 1 },
  };
  const labels = { g_X: "g_X", g_Y: "g_Y", delta: "\u03b4", sigma2: "\u03c3\u00b2", gamma: "\u03b3", N: "N" };
  for (const [name, range] of Object.entries(ranges)) {
    const input = slider(controls, labels[name], { ...range, value: params[name] }, (value) => {
      params[name] = value;
      draw();
    });
    input.dataset.parameter = name;
  }
  const image = element("canvas", { class: "live-demo-canvas", "aria-label": "the digit and the grid" });
  const patch = element("canvas", { class: "live-demo-canvas", "aria-label": "the read patch" });
  const filters = element("canvas", { class: "live-demo-canvas", "aria-label": "the filters F_X" });
  const caption = element("p", { class: "live-demo-detail" });
  app.append(picker, controls, element("div", { class: "live-demo-row" }, image, patch, filters), caption);

  function draw() {
    const begun = performance.now();
    const N = params.N;
    const values = read(x, params, A, B);
    const context = heatmap(image, x, B, A, { cell: SCALE, max: 1 });
    context.fillStyle = "#ff9f1c";
    for (let i = 1; i <= N; i++) {
      for (let j = 1; j <= N; j++) { // grid point (mu_X^j, mu_Y^i): pixels counted from 1, so 0.5 from the edge
        const u = params.g_X + (j - N / 2 - 0.5) * params.delta - 0.5;
        const v = params.g_Y + (i - N / 2 - 0.5) * params.delta - 0.5;
        context.beginPath();
        context.arc(u * SCALE, v * SCALE, Math.max(1.5, Math.min(4, Math.sqrt(params.sigma2) * SCALE / 2)), 0,
                    2 * Math.PI);
        context.fill();
      }
    }
    heatmap(patch, values, N, N, { cell: Math.max(4, Math.floor((B * SCALE) / N)), max: Math.max(1, ...values) });
    heatmap(filters, filterbank(params.g_X, params.delta, params.sigma2, N, A), N, A,
            { cell: 6, heat: true });
    caption.textContent = `read ${N} \u00d7 ${N} = gamma F_Y x F_X\u1d40 (left: the digit and the grid centres; ` +
      `middle: the read, brightest value ${Math.max(...values).toFixed(3)}; right: the rows of F_X)`;
    block.dataset.params = JSON.stringify(params);
    block.dataset.patch = JSON.stringify(Array.from(values));
    block.dataset.ms = (performance.now() - begun).toFixed(2); // the read and the three pictures
  }
  draw();
});
