// Loads every model in spec.models, one after the other, exactly as a kiosk
// page would (loadAndDigest in common.js), and reports for each: the digest of
// every weight, the digests of one prediction on a fixed input, and every URL
// the browser fetched for it.
//
// spec = {report: URL, script?: URL of shardsync.js, gate?: URL,
//         models: [{id, kind: "graph"|"layers"|"weights", url, via?: "shardsync",
//          gateBefore?: bool (POST {id} to spec.gate and wait, before loading it),
//          predict?: bool (default true), inputShapes?: {name or index: shape}}]}
'use strict';

async function main() {
  const spec = pageSpec();
  reportUncaught(spec);
  try {
    await setupTf();
    if (spec.script) await loadScript(spec.script);
    const models = [];
    for (const m of spec.models) {
      if (m.gateBefore) await postJSON(spec.gate, {id: m.id});  // the test acts here
      models.push(await loadAndDigest(m));
    }
    await report(spec, {ok: true, tfjs: tf.version.tfjs, backend: tf.getBackend(), models});
  } catch (e) {
    await report(spec, {ok: false, error: describeError(e)});
  }
}

main();
