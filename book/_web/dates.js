// Chapter 5's live demo: the trained transformer-dates model reads a date the reader types and
// writes it as YYYY-MM-DD, one character per decoder step, and shows the cross-attention of any
// layer and head. As the package's translate_dates() does, the answer is the greedy decoding with
// every step limited to the characters that can still end in a real day (the calendar); where the
// model's own greedy reading is not a day, the page shows it beside the answer.
import { element, heatmap, ort, session, start } from "./live.js";

start("dates", async (app, demos, block) => {
  const spec = demos.dates;
  const index = new Map(spec.vocab.map((token, id) => [token, id]));
  const specials = new Set([spec.pad, spec.bos, spec.eos]);
  const [runtime, encoder, decoder] = await Promise.all([
    ort(), session("dates-encoder.onnx"), session("dates-decoder.onnx"),
  ]);
  const ids = (values) => new runtime.Tensor("int64", BigInt64Array.from(values.map(BigInt)), [1, values.length]);

  const prefixes = calendarPrefixes(spec.first_year, spec.last_year);
  const allowedAfter = (written) => { // the ids that keep `written` on the way to a real day, then EOS
    const text = written.map((id) => spec.vocab[id]).join("");
    if (text.length === 10) return prefixes.has(text) ? [spec.eos] : [];
    return [..."0123456789-"].filter((c) => prefixes.has(text + c)).map((c) => index.get(c));
  };

  async function decode(src, memory, constrained) {
    const tgt = [spec.bos];
    let cross = null;
    for (let step = 0; step < spec.max_output; step++) {
      const out = await decoder.run({ tgt: ids(tgt), memory, src });
      const logits = out.logits.data;
      const candidates = constrained ? allowedAfter(tgt.slice(1)) : logits.keys();
      let best = -1;
      for (const v of candidates) if (best < 0 || logits[v] > logits[best]) best = v;
      if (best < 0) break;
      tgt.push(best);
      cross = out.cross;
      if (best === spec.eos) break;
    }
    const written = [];
    for (const id of tgt.slice(1)) {
      if (id === spec.eos) break;
      if (id !== spec.pad && id !== spec.bos) written.push(spec.vocab[id]);
    }
    return { text: written.join(""), rows: tgt.slice(1), cross };
  }

  async function read(text) {
    const chars = [...text];
    const unknown = [...new Set(chars.filter((c) => !index.has(c) || specials.has(index.get(c))))];
    if (!chars.length) throw new Error("type a date");
    if (unknown.length) throw new Error(`not in the vocabulary: ${unknown.map((c) => JSON.stringify(c)).join(" ")}`);
    if (chars.length > spec.max_len) throw new Error(`the model reads at most ${spec.max_len} characters`);
    const src = ids(chars.map((c) => index.get(c)));
    const { memory } = await encoder.run({ src });
    const greedy = await decode(src, memory, false);
    // a day as the package's writes_a_day counts one: ten characters of a real day, then EOS
    const day = greedy.rows.length === 11 && greedy.rows[10] === spec.eos &&
      isRealDay(greedy.text, spec.first_year, spec.last_year);
    const answer = day ? greedy : await decode(src, memory, true); // on a real day the two decodings agree
    return { output: answer.text, greedy: greedy.text, corrected: !day, rows: answer.rows, source: chars,
             cross: answer.cross };
  }

  const input = element("input", { type: "text", value: spec.examples[0].text, size: 32, "aria-label": "a date" });
  const output = element("code", { class: "live-output" });
  const verdict = element("span", { class: "live-demo-detail" });
  const layer = element("select", { "aria-label": "layer" });
  const head = element("select", { "aria-label": "head" });
  for (let l = 0; l < spec.layers; l++) layer.append(element("option", { value: l, text: `decoder layer ${l + 1}` }));
  head.append(element("option", { value: "mean", text: "mean of the heads" }));
  for (let h = 0; h < spec.heads; h++) head.append(element("option", { value: h, text: `head ${h + 1}` }));
  layer.value = String(spec.layers - 1);
  const canvas = element("canvas", { class: "live-demo-canvas", "aria-label": "cross-attention" });
  app.append(
    element("p", {}, element("label", {}, "Type a date: ", input), " \u2192 ", output, " ", verdict),
    element("p", {}, layer, " ", head),
    canvas,
  );

  let last = null;
  let pending = Promise.resolve();

  function draw() {
    if (!last) return;
    const [L, H, T, S] = last.cross.dims;
    const l = Number(layer.value);
    const weights = new Float32Array(T * S);
    const heads = head.value === "mean" ? [...Array(H).keys()] : [Number(head.value)];
    for (const h of heads) {
      for (let i = 0; i < T * S; i++) weights[i] += last.cross.data[((l * H + h) * T * S) + i] / heads.length;
    }
    drawAttention(canvas, weights, T, S, last.rows.map((id) => (id === spec.eos ? "</s>" : spec.vocab[id])),
                  last.source);
  }

  async function update() {
    const text = input.value;
    const begun = performance.now();
    try {
      last = await read(text);
      const ms = performance.now() - begun;
      output.textContent = last.output;
      verdict.textContent = (last.corrected ? `the model's own reading, ${last.greedy}, is not a day in ` +
        `${spec.first_year}-${spec.last_year}: the calendar overruled it ` : "") + `(${ms.toFixed(0)} ms)`;
      block.dataset.ms = ms.toFixed(1);
      draw();
    } catch (error) {
      last = null;
      output.textContent = "";
      verdict.textContent = error.message;
    }
    block.dataset.input = text;
    block.dataset.output = output.textContent;
    block.dataset.greedy = last ? last.greedy : "";
  }

  input.addEventListener("input", () => { pending = pending.then(update); });
  layer.addEventListener("change", draw);
  head.addEventListener("change", draw);
  await update();
});

function isRealDay(text, firstYear, lastYear) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (!match) return false;
  const [year, month, day] = match.slice(1).map(Number);
  const date = new Date(Date.UTC(year, month - 1, day));
  return year >= firstYear && year <= lastYear && date.getUTCFullYear() === year &&
    date.getUTCMonth() === month - 1 && date.getUTCDate() === day;
}

// Every prefix of every day firstYear-01-01 .. lastYear-12-31 written YYYY-MM-DD (whole dates included).
function calendarPrefixes(firstYear, lastYear) {
  const prefixes = new Set();
  const day = new Date(Date.UTC(firstYear, 0, 1));
  while (day.getUTCFullYear() <= lastYear) {
    const text = day.toISOString().slice(0, 10);
    for (let k = 1; k <= 10; k++) prefixes.add(text.slice(0, k));
    day.setUTCDate(day.getUTCDate() + 1);
  }
  return prefixes;
}

// Rows: the output characters (the query that wrote each); columns: the input characters.
function drawAttention(canvas, weights, T, S, rowLabels, columnLabels) {
  const cell = 18;
  const margin = 34;
  const grid = element("canvas");
  heatmap(grid, weights, T, S, { cell, max: 1, heat: true });
  canvas.width = margin + S * cell;
  canvas.height = margin + T * cell;
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(grid, margin, margin);
  context.fillStyle = "#222";
  context.font = "12px monospace";
  context.textAlign = "center";
  columnLabels.forEach((c, s) => context.fillText(c === " " ? "\u2423" : c, margin + (s + 0.5) * cell, margin - 8));
  context.textAlign = "right";
  rowLabels.forEach((c, t) => context.fillText(c, margin - 4, margin + (t + 0.7) * cell));
}
