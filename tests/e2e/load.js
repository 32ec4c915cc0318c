// Loads every model in spec.models, one after the other, exactly as a kiosk
// page would (tf.loadGraphModel / tf.loadLayersModel / tf.io.loadWeights on a
// URL), and reports for each: the digest of every weight, the digests of one
// prediction on a fixed input, and every URL the browser fetched for it.
//
// spec = {report: URL, models: [{id, kind: "graph"|"layers"|"weights", url,
//          predict?: bool (default true), inputShapes?: {name or index: shape}}]}
'use strict';

async function loadOne(m) {
  const res = {id: m.id, kind: m.kind, url: m.url, ok: false};
  const t0 = performance.now();
  const seenBefore = performance.getEntriesByType('resource').length;
  let model;
  try {
    if (m.kind === 'graph') {
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
    if (model) {
      if (typeof model.dispose === 'function') model.dispose();
      else tf.dispose(Object.values(model));
    }
  }
  res.fetched = performance.getEntriesByType('resource').slice(seenBefore)
    .map((e) => e.name).filter((u) => !u.startsWith(location.origin + '/'));  // not favicon, reports
  res.ms = Math.round(performance.now() - t0);
  return res;
}

async function main() {
  const spec = pageSpec();
  reportUncaught(spec);
  try {
    performance.setResourceTimingBufferSize(100000);
    await setupTf();
    const models = [];
    for (const m of spec.models) models.push(await loadOne(m));
    await report(spec, {ok: true, tfjs: tf.version.tfjs, backend: tf.getBackend(), models});
  } catch (e) {
    await report(spec, {ok: false, error: describeError(e)});
  }
}

main();
