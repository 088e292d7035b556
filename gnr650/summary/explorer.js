// The attention explorer (gnr650/summary/explorer.py writes the data): decodes each job's uint8 maps and draws the
// chosen image, maps and colour bar on <canvas>. Scoped to its own <section>; nothing global, nothing fetched.
(() => {
  "use strict";
  const section = document.currentScript.closest("section");
  const data = JSON.parse(section.querySelector(".ae-data").textContent);
  const controls = section.querySelector(".ae-controls");
  const note = section.querySelector(".ae-note");
  const view = section.querySelector(".ae-view");
  const ROLLOUT = -1, MEAN = -1, ALL = -1;
  const lut = Uint8Array.from(data.colourmap.match(/../g), (hex) => parseInt(hex, 16));

  function bytes(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  async function inflate(b64) {
    const stream = new Blob([bytes(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // A job's map for (slot, layer, head): a Float32Array of grid values, or a string saying why there is none.
  function reader(job, codes) {
    const size = job.grid[0] * job.grid[1];
    const perHead = new Set(job.perHead);
    const ranges = new Float32Array(bytes(job.ranges).buffer);
    const first = [];
    let stored = 0;
    job.layers.forEach((_, layer) => {
      first.push(stored);
      stored += perHead.has(layer) ? job.heads : 1;
    });
    const stride = stored + 1; // the rollout follows each image's layers
    const decode = (k) => {
      const low = ranges[2 * k], step = (ranges[2 * k + 1] - low) / data.levels;
      return Float32Array.from(codes.subarray(k * size, (k + 1) * size), (c) => low + c * step);
    };
    return (slot, layer, head) => {
      if (slot === null) return "image not exported by this job";
      const base = slot * stride;
      if (layer === ROLLOUT) return decode(base + stored);
      if (layer >= job.layers.length) return `has ${job.layers.length} layers`;
      if (!perHead.has(layer)) return head === MEAN ? decode(base + first[layer]) : "per-head maps not kept";
      if (head >= job.heads) return `has ${job.heads} heads`;
      if (head !== MEAN) return decode(base + first[layer] + head);
      const mean = new Float32Array(size);
      for (let h = 0; h < job.heads; h++) decode(base + first[layer] + h).forEach((v, i) => (mean[i] += v / job.heads));
      return mean;
    };
  }

  const state = { image: 0, layer: 0, job: ALL, head: MEAN, opacity: 0.6 };
  const maxLayers = Math.max(...data.jobs.map((j) => j.layers.length));
  state.layer = maxLayers - 1;

  function element(tag, props = {}, children = []) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function select(name, title, options, onChange) {
    const menu = element("select", { name });
    for (const [value, text] of options) menu.append(element("option", { value, textContent: text }));
    menu.addEventListener("change", () => onChange(Number(menu.value)));
    controls.append(element("label", {}, [title + " ", menu]));
    return menu;
  }

  function buildControls() {
    const seen = {};
    const images = data.images.map((image, i) => {
      seen[image.class] = (seen[image.class] || 0) + 1;
      const many = data.images.filter((other) => other.class === image.class).length > 1;
      return [i, many ? `${image.class} (${seen[image.class]})` : image.class];
    });
    select("image", "Class", images, (v) => ((state.image = v), render()));
    const layers = [];
    for (let l = 0; l < maxLayers; l++) {
      const name = data.jobs.find((j) => j.layers.length > l).layers[l];
      layers.push([l, `layer ${l + 1} · ${name}`]);
    }
    layers.push([ROLLOUT, "rollout (all layers)"]);
    select("layer", "Layer", layers, (v) => ((state.layer = v), render())).value = state.layer;
    const jobs = [[ALL, "all jobs side by side"], ...data.jobs.map((j, i) => [i, j.label])];
    select("job", "Job", jobs, (v) => ((state.job = v), render()));
    const maxHeads = Math.max(...data.jobs.map((j) => j.heads));
    const heads = [[MEAN, "mean of heads"]];
    for (let h = 0; h < maxHeads; h++) heads.push([h, `head ${h + 1}`]);
    select("head", "Heads", heads, (v) => ((state.head = v), render()));
    const opacity = element("input", { type: "range", name: "opacity", min: 0, max: 1, step: 0.05, value: 0.6 });
    opacity.addEventListener("input", () => ((state.opacity = Number(opacity.value)), render()));
    controls.append(element("label", {}, ["Map opacity ", opacity]));
  }

  // The image in grey, drawn once per size: the colours of the map stay readable on top of it.
  const greys = new WeakMap();
  function grey(image, width, height) {
    if (!greys.has(image)) greys.set(image, new Map());
    const sized = greys.get(image), key = `${width}x${height}`;
    if (!sized.has(key)) {
      const canvas = element("canvas", { width, height });
      const ctx = canvas.getContext("2d");
      ctx.drawImage(image, 0, 0, width, height);
      const pixels = ctx.getImageData(0, 0, width, height);
      const p = pixels.data;
      for (let i = 0; i < p.length; i += 4) p[i] = p[i + 1] = p[i + 2] = 0.299 * p[i] + 0.587 * p[i + 1] + 0.114 * p[i + 2];
      ctx.putImageData(pixels, 0, 0);
      sized.set(key, canvas);
    }
    return sized.get(key);
  }

  function colourOf(t) {
    const k = 3 * Math.max(0, Math.min(255, Math.round(t * 255)));
    return [lut[k], lut[k + 1], lut[k + 2]];
  }

  // One patch = one square of `cell` pixels (nearest neighbour), the patch grid drawn over it.
  function drawMap(canvas, image, values, grid, low, high) {
    const [rows, cols] = grid;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(grey(image, canvas.width, canvas.height), 0, 0);
    const heat = new ImageData(cols, rows);
    const span = high > low ? high - low : 1;
    values.forEach((v, i) => {
      heat.data.set([...colourOf((v - low) / span), 255], 4 * i);
    });
    const small = element("canvas", { width: cols, height: rows });
    small.getContext("2d").putImageData(heat, 0, 0);
    ctx.globalAlpha = state.opacity;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.22)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let c = 1; c < cols; c++) {
      const x = Math.round((c * canvas.width) / cols) + 0.5;
      ctx.moveTo(x, 0), ctx.lineTo(x, canvas.height);
    }
    for (let r = 1; r < rows; r++) {
      const y = Math.round((r * canvas.height) / rows) + 0.5;
      ctx.moveTo(0, y), ctx.lineTo(canvas.width, y);
    }
    ctx.stroke();
  }

  function format(v) {
    return v === 0 ? "0" : Math.abs(v) >= 0.01 ? v.toFixed(3) : v.toPrecision(2);
  }

  function colourBar(height, low, high, patches) {
    const canvas = element("canvas", { width: 16, height });
    const ctx = canvas.getContext("2d");
    for (let y = 0; y < height; y++) {
      ctx.fillStyle = `rgb(${colourOf(1 - y / (height - 1)).join(",")})`;
      ctx.fillRect(0, y, 16, 1);
    }
    const ticks = element("div", { className: "ae-ticks" });
    const tick = (value, text, extra = "") => {
      const top = high > low ? (100 * (high - value)) / (high - low) : 50;
      const props = { className: "ae-tick " + extra, textContent: text, title: String(value), style: `top: ${top}%` };
      ticks.append(element("span", props));
    };
    tick(high, format(high), "ae-max");
    if (high > low) tick((low + high) / 2, format((low + high) / 2));
    tick(low, format(low), "ae-min");
    const uniform = 1 / patches;
    if (high > low && uniform > low + 0.1 * (high - low) && uniform < high - 0.1 * (high - low)) {
      tick(uniform, `${format(uniform)} uniform`, "ae-uniform");
    }
    return element("div", { className: "ae-colourbar", title: "attention weight" }, [
      element("div", { className: "ae-bar" }, [canvas, ticks]),
      element("span", { className: "ae-unit", textContent: "attention weight" }),
    ]);
  }

  function markOf(job) {
    const slot = job.slots[state.image];
    const mark = job.marks[state.image];
    if (slot === null) return null;
    if (mark === null) return element("span", { className: "ae-mark ae-unknown", textContent: "? prediction not saved" });
    return mark.correct
      ? element("span", { className: "ae-mark ae-correct", textContent: "✓ correct" })
      : element("span", { className: "ae-mark ae-wrong", textContent: `✗ predicted ${mark.predicted}` });
  }

  function render() {
    const image = data.images[state.image];
    const indices = state.job === ALL ? data.jobs.map((_, i) => i) : [state.job];
    const maps = indices.map((i) => data.jobs[i].map(data.jobs[i].slots[state.image], state.layer, state.head));
    const shown = maps.filter((m) => typeof m !== "string");
    const low = Math.min(...shown.map((m) => m.reduce((a, b) => Math.min(a, b), Infinity)));
    const high = Math.max(...shown.map((m) => m.reduce((a, b) => Math.max(a, b), -Infinity)));
    const side = state.job === ALL && indices.length > 1 ? 176 : 320;
    const grid = data.jobs[indices[0]].grid;
    const cellOf = (job) => Math.max(1, Math.floor(side / Math.max(...job.grid)));
    const photo = element("canvas", { width: cellOf(data.jobs[indices[0]]) * grid[1], height: cellOf(data.jobs[indices[0]]) * grid[0] });
    photo.getContext("2d").drawImage(image.element, 0, 0, photo.width, photo.height);
    const photoTile = element("figure", { className: "ae-tile ae-photo" }, [photo, element("figcaption", {}, [
      element("span", { className: "ae-class", textContent: image.class }),
      element("span", { className: "ae-mark", textContent: "true class" }),
    ])]);
    const tiles = [];
    indices.forEach((i, n) => {
      const job = data.jobs[i];
      const cell = cellOf(job);
      let body;
      if (typeof maps[n] === "string") {
        const style = `width:${photo.width}px;height:${photo.height}px`;
        body = element("div", { className: "ae-missing", textContent: maps[n], style });
      } else {
        body = element("canvas", { width: cell * job.grid[1], height: cell * job.grid[0] });
        drawMap(body, image.element, maps[n], job.grid, low, high);
      }
      const caption = element("figcaption", {}, [element("span", { className: "ae-job", textContent: job.label })]);
      const mark = markOf(job);
      if (mark) caption.append(mark);
      const tile = element("figure", { className: "ae-tile ae-map" }, [body, caption]);
      tile.style.setProperty("--job", job.colour);
      tiles.push(tile);
    });
    const patches = Math.max(...indices.map((i) => data.jobs[i].grid[0] * data.jobs[i].grid[1]));
    const bar = shown.length ? [colourBar(photo.height, low, high, patches)] : [];
    view.replaceChildren(photoTile, ...bar, element("div", { className: "ae-tiles" }, tiles));
    const headMenu = controls.querySelector("select[name=head]");
    headMenu.disabled = state.layer === ROLLOUT;
    const kept = [...new Set(indices.flatMap((i) => data.jobs[i].perHead))].sort((a, b) => a - b);
    const notes = [];
    if (state.layer === ROLLOUT) notes.push("The rollout combines all heads of all layers (Abnar & Zuidema, 2020).");
    if (kept.length < maxLayers) {
      const list = kept.length ? `layers ${kept.map((l) => l + 1).join(", ")} only` : "no layer";
      notes.push(`Per-head maps are kept for ${list} to keep this page small (head means and rollout for every layer); ` +
        "each job's artifacts/attention.npz has them all.");
    }
    if (indices.length > 1) notes.push("One colour scale for all jobs shown: the min and max over their maps.");
    note.textContent = notes.join(" ");
    section.dataset.ready = "true";
  }

  async function start() {
    await Promise.all(data.images.map(async (image) => {
      image.element = element("img", { src: image.src });
      await image.element.decode();
    }));
    await Promise.all(data.jobs.map(async (job) => (job.map = reader(job, await inflate(job.codes)))));
    buildControls();
    render();
  }

  start().catch((error) => {
    view.textContent = `The attention explorer could not start in this browser: ${error}`;
    throw error;
  });
})();
