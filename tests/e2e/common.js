// Helpers shared by the end-to-end pages (load.html, readers.html).
//
// A page gets its job as JSON in the query string (?spec=...), does it with
// TF.js on the CPU backend, and POSTs one JSON result to spec.report on the
// collector that served it (tests/e2e/browser.py). Any uncaught error is
// reported there too, so the Python side never waits for nothing.
'use strict';

// Bytes per chunk hash: small enough that a mismatch says where in a weight the
// bytes differ (1024 float32 elements), large enough that a 20 MB model yields a
// few thousand hashes. tests/e2e/browser.py _CHUNK_BYTES must be equal.
const CHUNK_BYTES = 4096;
// Values shown per weight or output in a failure message.
const HEAD_VALUES = 6;

function pageSpec() {
  const raw = new URLSearchParams(location.search).get('spec');
  if (!raw) throw new Error('no ?spec= in the page URL');
  return JSON.parse(raw);
}

async function postJSON(url, body) {
  const resp = await fetch(url, {
    method: 'POST',
    headers: {'content-type': 'application/json'},
    body: JSON.stringify(body),
  });
  if (!resp.ok) throw new Error(`POST ${url}: HTTP ${resp.status}`);
  return resp.json();
}

// A loaded model, or the named tensors tf.io.loadWeights gives, freed (null: nothing).
function disposeModel(model) {
  if (!model) return;
  if (typeof model.dispose === 'function') model.dispose();
  else tf.dispose(Object.values(model));
}

function describeError(e) {
  if (e instanceof Error) return `${e.name}: ${e.message}\n${e.stack || ''}`;
  return String(e);
}

// Report any uncaught error to spec.report, once, and stop.
let reported = false;
async function report(spec, result) {
  if (reported) return;
  reported = true;
  await postJSON(spec.report, result);
}

function reportUncaught(spec) {
  const fail = (what) => report(spec, {ok: false, error: what}).catch(() => {});
  window.addEventListener('error', (ev) => fail(`uncaught: ${ev.message} at ${ev.filename}:${ev.lineno}`));
  window.addEventListener('unhandledrejection', (ev) => fail(`unhandled rejection: ${describeError(ev.reason)}`));
}

async function setupTf() {
  // loadAndDigest reads what was fetched from resource timing: keep every entry.
  performance.setResourceTimingBufferSize(100000);
  if (typeof tf === 'undefined') throw new Error('tf.min.js did not load (is TF.js installed? run tests/setup-deps.sh)');
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`backend is ${tf.getBackend()}, not cpu`);
}

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

// FNV-1a, 32 bit: a cheap hash per chunk, only to locate a difference.
function fnv1a(bytes, start, end) {
  let h = 0x811c9dc5;
  for (let i = start; i < end; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, '0');
}

// The bytes of a tensor's values as TF.js holds them after loading (float32
// after dequantization). String tensors: each element length-prefixed.
function tensorBytes(t) {
  const data = t.dataSync();
  if (t.dtype !== 'string') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const parts = [];
  let total = 0;
  for (const el of data) {
    const b = el instanceof Uint8Array ? el : new TextEncoder().encode(String(el));
    const len = new Uint8Array(new Uint32Array([b.length]).buffer);
    parts.push(len, b);
    total += 4 + b.length;
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

// JSON has no NaN/Infinity: send those as strings.
function jsonNumber(x) {
  return Number.isFinite(x) ? x : String(x);
}

// Digest of one tensor: sha256 of its bytes, chunk hashes, a few values and stats.
async function digestTensor(t, {chunks = true} = {}) {
  const bytes = tensorBytes(t);
  const out = {
    dtype: t.dtype,
    shape: t.shape,
    bytes: bytes.length,
    sha256: hex(await crypto.subtle.digest('SHA-256', bytes)),
  };
  if (chunks) {
    out.chunks = [];
    for (let off = 0; off < bytes.length; off += CHUNK_BYTES) {
      out.chunks.push(fnv1a(bytes, off, Math.min(off + CHUNK_BYTES, bytes.length)));
    }
  }
  if (t.dtype !== 'string') {
    const v = t.dataSync();
    let min = Infinity, max = -Infinity, sum = 0, nan = 0;
    for (let i = 0; i < v.length; i++) {
      const x = Number(v[i]);
      if (Number.isNaN(x)) { nan++; continue; }
      if (x < min) min = x;
      if (x > max) max = x;
      sum += x;
    }
    out.head = Array.from(v.slice(0, HEAD_VALUES), (x) => jsonNumber(Number(x)));
    out.stats = {min: jsonNumber(min), max: jsonNumber(max), sum: jsonNumber(sum), nan};
  }
  return out;
}

// Every weight of a loaded model (or a NamedTensorMap), by name, sorted.
async function digestWeights(model, opts) {
  const named = [];
  if (model instanceof tf.GraphModel) {
    for (const [name, tensors] of Object.entries(model.weights)) {
      tensors.forEach((t, i) => named.push([tensors.length > 1 ? `${name}:${i}` : name, t]));
    }
  } else if (model instanceof tf.LayersModel) {
    for (const v of model.weights) named.push([v.originalName || v.name, v.read()]);
  } else {
    for (const [name, t] of Object.entries(model)) named.push([name, t]);
  }
  named.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out = {};
  for (const [name, t] of named) out[name] = await digestTensor(t, opts);
  return out;
}

// A fixed input: the same numbers on every run, in every browser.
function fixedInput(shape, dtype) {
  const dims = shape.map((d) => (d == null || d < 0 ? 1 : d));
  const n = dims.reduce((a, b) => a * b, 1);
  if (dtype === 'int32' || dtype === 'bool') {
    const mod = dtype === 'bool' ? 2 : 10;
    const v = new Int32Array(n);
    for (let i = 0; i < n; i++) v[i] = (Math.imul(i + 1, 2654435761) >>> 0) % mod;
    return tf.tensor(v, dims, dtype);
  }
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = ((Math.imul(i + 1, 2654435761) >>> 0) % 2001) / 1000 - 1;
  return tf.tensor(v, dims, 'float32');
}

// One prediction on the fixed input; returns digests of every output, in order.
async function predict(model, inputShapes) {
  const shapeOf = (inp, i) => (inputShapes && (inputShapes[inp.name] || inputShapes[i])) || inp.shape;
  let outputs;
  const inputs = model.inputs.map((inp, i) => fixedInput(shapeOf(inp, i), inp.dtype || 'float32'));
  try {
    if (model instanceof tf.GraphModel) {
      const feed = {};
      model.inputs.forEach((inp, i) => { feed[inp.name] = inputs[i]; });
      outputs = await model.executeAsync(feed);
    } else {
      outputs = model.predict(inputs.length === 1 ? inputs[0] : inputs);
    }
    const list = Array.isArray(outputs) ? outputs : [outputs];
    const res = [];
    for (const t of list) res.push(await digestTensor(t, {chunks: false}));
    return res;
  } finally {
    tf.dispose(inputs);
    if (outputs) tf.dispose(outputs);
  }
}

// "versions/<v>/" in a URL or path names the version it belongs to.
function versionOf(url) {
  const m = /\/?versions\/([^/]+)\//.exec(url);
  return m ? m[1] : null;
}

// Add <script src=url> (e.g. the site's shardsync.js) and wait until it ran.
function loadScript(url) {
  return new Promise((resolve, reject) => {
    const el = document.createElement('script');
    el.src = url;
    el.onload = resolve;
    el.onerror = () => reject(new Error(`script ${url} did not load`));
    document.head.appendChild(el);
  });
}

// Load with the site's shardsync.js (spec.script): what it says about the load,
// beside the model. progress: every fraction onProgress got; cached: the versions
// the cache holds whole afterwards.
async function loadViaShardsync(m, res) {
  if (typeof shardsync === 'undefined') throw new Error('shardsync.js is not on the page (no spec.script?)');
  res.progress = [];
  const r = await shardsync.load(m.url, {onProgress: (f) => res.progress.push(f)});
  Object.assign(res, {version: r.version, offline: r.offline, format: r.format,
                      fromCache: r.fromCache, evicted: r.evicted, cacheError: r.cacheError});
  res.cached = await shardsync.cached(m.url);
  return r.model;
}

// Load one model as a kiosk page would: tf.loadGraphModel / tf.loadLayersModel
// on its URL, or fetch + tf.io.loadWeights for a bare weights manifest; with
// m.via === 'shardsync', shardsync.load(m.url) instead. Returns
// {id, kind, url, ok, error?, weights, outputs, fetched: [URLs], ms} (and what
// loadViaShardsync adds); never throws.
async function loadAndDigest(m) {
  const res = {id: m.id, kind: m.kind, url: m.url, ok: false};
  const t0 = performance.now();
  let model;
  try {
    if (m.via === 'shardsync') {
      model = await loadViaShardsync(m, res);
    } else if (m.kind === 'graph') {
      model = await tf.loadGraphModel(m.url);
    } else if (m.kind === 'layers') {
      model = await tf.loadLayersModel(m.url);
    } else if (m.kind === 'weights') {
      const resp = await fetch(m.url);
      if (!resp.ok) throw new Error(`GET ${m.url}: HTTP ${resp.status}`);
      const manifest = await resp.json();
      const prefix = m.url.slice(0, m.url.lastIndexOf('/') + 1);
      model = await tf.io.loadWeights(manifest, prefix);
    } else {
      throw new Error(`unknown kind ${m.kind}`);
    }
    res.weights = await digestWeights(model);
    res.outputs = m.kind !== 'weights' && m.predict !== false
      ? await predict(model, m.inputShapes) : null;
    res.ok = true;
  } catch (e) {
    res.error = describeError(e);
  } finally {
    disposeModel(model);
  }
  // Resource timing entries appear a little after their response ends, so
  // select by start time (not by count) and read them only now, after digesting.
  const t1 = performance.now();
  res.fetched = performance.getEntriesByType('resource')
    .filter((e) => e.startTime >= t0 && e.startTime <= t1)
    .map((e) => e.name).filter((u) => !u.startsWith(location.origin + '/'));  // not favicon, reports
  res.ms = Math.round(t1 - t0);
  return res;
}
