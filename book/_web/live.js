// The live demos' shared part: start a demo where the book is served over http, load the
// onnxruntime-web copy that sits beside this file, and draw small heatmaps.
//
// Each demo block (written by attn_course.web.live_demo) is a <div class="live-demo"
// data-demo="NAME"> holding a static figure (.live-demo-fallback) and an empty
// .live-demo-app. Opened from file://, the browser does not run module scripts at all, so
// the static figure stays. Served over http, start() builds the demo into .live-demo-app
// and marks the block "live", which hides the figure (live.css). Everything the demos
// need (vocabularies, sizes, reference cases) is in demos.json, written by
// `python -m attn_course export-web` from the package.

const HERE = new URL("./", import.meta.url);
let demosPromise = null;
let ortPromise = null;

export function demos() {
  demosPromise ??= fetch(new URL("demos.json", HERE)).then((response) => {
    if (!response.ok) throw new Error(`demos.json: HTTP ${response.status}`);
    return response.json();
  });
  return demosPromise;
}

export function ort() {
  ortPromise ??= import(new URL("ort.wasm.min.mjs", HERE).href).then((module) => {
    module.env.wasm.wasmPaths = HERE.href; // the .wasm and its loader beside this file, never a CDN
    module.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a static host lacks
    return module;
  });
  return ortPromise;
}

export async function session(name) {
  const runtime = await ort();
  return runtime.InferenceSession.create(new URL(name, HERE).href, { executionProviders: ["wasm"] });
}

// Build every block of this demo on the page: build(app, demos, block) fills the app element.
export function start(name, build) {
  if (location.protocol === "file:") return;
  for (const block of document.querySelectorAll(`.live-demo[data-demo="${name}"]`)) {
    const app = block.querySelector(".live-demo-app");
    demos()
      .then((data) => build(app, data, block))
      .then(() => {
        block.classList.add("live");
        block.dataset.state = "ready";
      })
      .catch((error) => {
        block.dataset.state = "failed";
        const note = document.createElement("p");
        note.className = "live-demo-error";
        note.textContent = `The live demo could not start (${error.message}); the figure above is its static version.`;
        block.append(note);
      });
  }
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// A labelled slider; onInput(value) is called on every move. Returns the <input>.
export function slider(parent, label, { min, max, step, value }, onInput) {
  const input = element("input", { type: "range", min, max, step, value, "aria-label": label });
  const shown = element("output", { text: String(value) });
  input.addEventListener("input", () => {
    shown.textContent = input.value;
    onInput(Number(input.value));
  });
  parent.append(element("label", { class: "live-demo-slider" }, `${label} `, input, " ", shown));
  return input;
}

// values (rows x cols, row-major) drawn on a canvas as a grey or heat map, one cell per value.
export function heatmap(canvas, values, rows, cols, { cell = 16, max = null, heat = false } = {}) {
  canvas.width = cols * cell;
  canvas.height = rows * cell;
  const context = canvas.getContext("2d");
  const top = max ?? Math.max(1e-12, ...values);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = Math.min(Math.max(values[r * cols + c] / top, 0), 1);
      context.fillStyle = heat ? heatColour(v) : `rgb(${255 * v},${255 * v},${255 * v})`;
      context.fillRect(c * cell, r * cell, cell, cell);
    }
  }
  return context;
}

function heatColour(v) {
  // black -> purple -> orange -> pale yellow, close to matplotlib's "inferno"
  const stops = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  const x = v * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  const mix = stops[i].map((a, k) => Math.round(a + f * (stops[i + 1][k] - a)));
  return `rgb(${mix[0]},${mix[1]},${mix[2]})`;
}
