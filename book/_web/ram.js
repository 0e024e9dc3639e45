// Chapter 1's live demo: the trained ram-mnist28 reads a digit glimpse by glimpse in the page.
// One exported step is (1.1): the glimpse rho(x, l_t), the glimpse network, the core network's
// h_t, the class probabilities a_t and the mean mu_t of the next location. The page follows mu
// (the deterministic policy, as attn_course.ram.glimpse_paths does) from the centre, or puts the
// next glimpse where the reader clicks.
import { element, ort, session, start } from "./live.js";

const SCALE = 10; // screen pixels per image pixel

start("ram", async (app, demos, block) => {
  const spec = demos.ram;
  const size = spec.image_size;
  const [runtime, step] = await Promise.all([ort(), session("ram-mnist28-step.onnx")]);
  let image = new Float32Array(size * size);
  let glimpses = []; // {l: [x, y], probabilities}
  let h = new Float32Array(spec.hidden);
  let mu = [0, 0]; // where the policy would look next (the centre before the first glimpse)
  let drawing = false;

  const canvas = element("canvas", { class: "live-demo-canvas", width: size * SCALE, height: size * SCALE,
                                     "aria-label": "the digit and the glimpses; click to place the next glimpse" });
  const bars = element("div", { class: "live-ram-bars" });
  const status = element("p", { class: "live-demo-detail" });
  const picker = element("p", {}, "Digit: ");
  spec.digits.forEach((_, d) => {
    const button = element("button", { type: "button", "data-digit": d, text: String(spec.labels[d]) });
    button.addEventListener("click", () => pick(d));
    picker.append(button, " ");
  });
  const drawButton = element("button", { type: "button", text: "draw your own" });
  drawButton.addEventListener("click", () => {
    drawing = true;
    image = new Float32Array(size * size);
    run(async () => reset());
  });
  picker.append(drawButton);
  const next = element("button", { type: "button", text: "next glimpse" });
  const all = element("button", { type: "button", text: `all ${spec.num_glimpses}` });
  const restart = element("button", { type: "button", text: "start again" });
  // asking for a glimpse ends drawing: from then on a click places the next glimpse
  next.addEventListener("click", () => { drawing = false; run(() => glimpse(mu)); });
  all.addEventListener("click", () => {
    drawing = false;
    run(async () => { while (glimpses.length < spec.num_glimpses) await glimpse(mu); });
  });
  restart.addEventListener("click", () => run(async () => reset()));
  app.append(picker, element("p", {}, next, " ", all, " ", restart),
             element("div", { class: "live-demo-row" }, canvas, bars), status);

  let queue = Promise.resolve();
  function run(action) {
    queue = queue.then(action).then(show).catch((error) => { status.textContent = error.message; });
    return queue;
  }

  async function glimpse(l) {
    if (glimpses.length >= spec.num_glimpses) return;
    const feeds = {
      image: new runtime.Tensor("float32", image, [1, 1, size, size]),
      l: new runtime.Tensor("float32", Float32Array.from(l), [1, 2]),
      h: new runtime.Tensor("float32", h, [1, spec.hidden]),
    };
    const begun = performance.now();
    const out = await step.run(feeds);
    block.dataset.ms = (performance.now() - begun).toFixed(2); // one glimpse step in onnxruntime-web
    h = out.h_next.data;
    mu = Array.from(out.mu.data);
    glimpses.push({ l: Array.from(l), probabilities: Array.from(out.probabilities.data) });
  }

  function reset() {
    glimpses = [];
    h = new Float32Array(spec.hidden);
    mu = [0, 0];
  }

  function pick(d) {
    drawing = false;
    image = Float32Array.from(spec.digits[d].flat(), (v) => v / 255);
    block.dataset.digit = String(d);
    run(async () => reset());
  }

  // A click places the next glimpse there (l in [-1, 1]: the pixel-edge coordinate over half the side, minus 1).
  // While drawing, dragging paints the digit instead.
  let painting = false;
  canvas.addEventListener("pointerdown", (event) => {
    const [u, v] = position(event);
    if (drawing) { painting = true; paint(u, v); show(); return; }
    const clamp = (c) => Math.min(Math.max(c, -1), 1); // as the model clamps l_t
    run(() => glimpse([clamp(2 * u / size - 1), clamp(2 * v / size - 1)]));
  });
  canvas.addEventListener("pointermove", (event) => { if (painting) { paint(...position(event)); show(); } });
  addEventListener("pointerup", () => { painting = false; });

  function position(event) { // in image pixels from the picture's corner (inside the canvas's border)
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left - canvas.clientLeft;
    const y = event.clientY - box.top - canvas.clientTop;
    return [x * size / canvas.clientWidth, y * size / canvas.clientHeight];
  }

  function paint(u, v) { // a soft round brush, about 2.5 pixels across, like MNIST's pen
    for (let row = 0; row < size; row++) {
      for (let column = 0; column < size; column++) {
        const d2 = (column + 0.5 - u) ** 2 + (row + 0.5 - v) ** 2;
        const ink = Math.exp(-d2 / 1.2);
        if (ink > 0.05) image[row * size + column] = Math.min(1, image[row * size + column] + ink);
      }
    }
    glimpses = [];
    h = new Float32Array(spec.hidden);
    mu = [0, 0];
  }

  function show() {
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(size, size);
    image.forEach((v, i) => {
      pixels.data.set([255 * v, 255 * v, 255 * v, 255], 4 * i);
    });
    const small = element("canvas", { width: size, height: size });
    small.getContext("2d").putImageData(pixels, 0, 0);
    context.imageSmoothingEnabled = false;
    context.drawImage(small, 0, 0, size * SCALE, size * SCALE);
    const g = spec.glimpse_size;
    const centres = glimpses.map(({ l }) => l.map((c) => (c + 1) * size / 2 * SCALE));
    context.lineWidth = 2;
    centres.forEach(([x, y], t) => {
      for (let k = 0; k < spec.num_scales; k++) {
        const side = g * 2 ** k * SCALE;
        context.strokeStyle = t === centres.length - 1 ? "#3ddc84" : "rgba(61, 220, 132, 0.45)";
        context.strokeRect(x - side / 2, y - side / 2, side, side);
      }
    });
    context.strokeStyle = "#3ddc84";
    context.beginPath();
    centres.forEach(([x, y], t) => (t ? context.lineTo(x, y) : context.moveTo(x, y)));
    context.stroke();
    if (glimpses.length < spec.num_glimpses && glimpses.length) { // where the policy would look next
      const [x, y] = mu.map((c) => (c + 1) * size / 2 * SCALE);
      context.setLineDash([4, 4]);
      context.strokeStyle = "#ffb000";
      context.strokeRect(x - g * SCALE / 2, y - g * SCALE / 2, g * SCALE, g * SCALE);
      context.setLineDash([]);
    }
    const last = glimpses.at(-1);
    bars.replaceChildren(...(last ? last.probabilities : Array(10).fill(0)).map((p, c) => element("div",
      { class: "live-ram-bar" }, element("span", { text: String(c) }),
      element("span", { style: `display:inline-block;height:0.8em;background:#3d7ddc;width:${(120 * p).toFixed(1)}px` }),
      element("span", { text: ` ${(100 * p).toFixed(1)}%` }))));
    const predicted = last ? last.probabilities.indexOf(Math.max(...last.probabilities)) : null;
    status.textContent = drawing && !glimpses.length
      ? "Draw a digit with the mouse, then ask for glimpses."
      : last ? `after glimpse ${glimpses.length} of ${spec.num_glimpses}: class ${predicted}` +
               (glimpses.length < spec.num_glimpses ? " (dashed: where the policy looks next; click to look elsewhere)" : "")
             : "The first glimpse is at the centre; click the digit to put it elsewhere.";
    block.ramImage = image; // the pixels the model reads, for the browser test
    block.dataset.glimpses = String(glimpses.length);
    block.dataset.locations = JSON.stringify(glimpses.map(({ l }) => l));
    block.dataset.probabilities = JSON.stringify(glimpses.map(({ probabilities }) => probabilities));
    block.dataset.predicted = predicted === null ? "" : String(predicted);
  }

  pick(0);
  await queue;
});
