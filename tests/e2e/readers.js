// Readers during an update: load spec.model spec.loads times in a row, each
// time as a kiosk page does (the entry-point manifest, then its shards), with a
// pause between the two: TF.js's fetchFunc holds back the first shard request
// until spec.gate (a POST to the test, which publishes a new version meanwhile)
// has answered and spec.pauseMs has passed. Each load records which version its
// manifest named, which versions its shard URLs named, their HTTP statuses and
// the sha256 of every weight it ended with. Then spec.references (e.g. the
// origin's copy of each version) are loaded once each, for the test to compare.
// With spec.sw, everything runs under sw.js, which caches shards by URL. With
// model.via === 'shardsync', each load is shardsync.load (spec.script) with the
// same holding fetchFunc; shards its cache served are in fromCache, not shardUrls.
//
// spec = {model: {id, kind, url, via?}, loads: N, pauseMs?, gate?: URL, sw?: bool, script?: URL,
//         references?: [{id, kind, url}], report: URL, log: URL}
'use strict';

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function log(spec, line) {
  await postJSON(spec.log, {line});
}

async function underServiceWorker() {
  if (!('serviceWorker' in navigator)) throw new Error('no navigator.serviceWorker (not a secure context?)');
  await navigator.serviceWorker.register('sw.js');
  await navigator.serviceWorker.ready;
  if (!navigator.serviceWorker.controller) {
    // sw.js claims its clients when it activates; wait for that.
    await new Promise((resolve) => {
      navigator.serviceWorker.addEventListener('controllerchange', resolve, {once: true});
      if (navigator.serviceWorker.controller) resolve();
    });
  }
}

function serviceWorkerStats() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = (ev) => resolve(ev.data);
    navigator.serviceWorker.controller.postMessage({stats: true}, [channel.port2]);
  });
}

function manifestVersions(text) {
  const doc = JSON.parse(text);
  const groups = Array.isArray(doc) ? doc : doc.weightsManifest || [];
  const versions = new Set();
  for (const g of groups) for (const p of g.paths) versions.add(versionOf(p));
  return [...versions];
}

async function loadOnce(spec, i) {
  const m = spec.model;
  const rec = {i, ok: false, manifestVersions: [], shardUrls: [], shardVersions: [], statuses: []};
  const t0 = performance.now();
  let held = null;
  const holdShards = () => {
    if (!held) {
      held = (async () => {
        if (spec.gate) rec.gate = await postJSON(spec.gate, {i, manifestVersions: rec.manifestVersions});
        if (spec.pauseMs) await sleep(spec.pauseMs);
      })();
    }
    return held;
  };
  const fetchFunc = async (url, init, opts) => {
    if (opts && opts.isBinary) {
      await holdShards();
      rec.shardUrls.push(url);
      const resp = await fetch(url, init);
      rec.statuses.push(resp.status);
      return resp;
    }
    const resp = await fetch(url, init);
    const get = !init || !init.method || init.method === 'GET';  // not shardsync's HEADs
    if (resp.ok && get) rec.manifestVersions = manifestVersions(await resp.clone().text());
    return resp;
  };
  let model;
  try {
    if (m.via === 'shardsync') {
      const r = await shardsync.load(m.url, {fetchFunc});
      model = r.model;
      Object.assign(rec, {version: r.version, offline: r.offline, fromCache: r.fromCache});
    } else if (m.kind === 'graph') {
      model = await tf.loadGraphModel(m.url, {fetchFunc});
    } else if (m.kind === 'layers') {
      model = await tf.loadLayersModel(m.url, {fetchFunc});
    } else if (m.kind === 'weights') {
      const resp = await fetchFunc(m.url, {});
      if (!resp.ok) throw new Error(`GET ${m.url}: HTTP ${resp.status}`);
      const manifest = await resp.json();
      const prefix = m.url.slice(0, m.url.lastIndexOf('/') + 1);
      const fetchWeights = (urls) => Promise.all(
        urls.map((u) => fetchFunc(u, {}, {isBinary: true}).then((r) => r.arrayBuffer())));
      model = await tf.io.weightsLoaderFactory(fetchWeights)(manifest, prefix);
    } else {
      throw new Error(`unknown kind ${m.kind}`);
    }
    const digests = await digestWeights(model, {chunks: false});
    rec.weights = Object.fromEntries(Object.entries(digests).map(([k, d]) => [k, d.sha256]));
    rec.ok = true;
  } catch (e) {
    rec.error = describeError(e);
  } finally {
    disposeModel(model);
  }
  rec.shardVersions = [...new Set([...rec.shardUrls, ...(rec.fromCache || [])].map(versionOf))];
  rec.ms = Math.round(performance.now() - t0);
  return rec;
}

async function main() {
  const spec = pageSpec();
  reportUncaught(spec);
  try {
    if (spec.sw) await underServiceWorker();
    await setupTf();
    if (spec.script) await loadScript(spec.script);
    const loads = [];
    for (let i = 0; i < spec.loads; i++) {
      const rec = await loadOnce(spec, i);
      loads.push(rec);
      await log(spec, `load ${i}: manifest ${rec.manifestVersions} shards ${rec.shardVersions} ` +
                `statuses ${rec.statuses} ${rec.ok ? 'ok' : rec.error}`);
    }
    const sw = spec.sw ? await serviceWorkerStats() : null;  // the loads' alone
    const references = [];
    for (const r of spec.references || []) references.push(await loadAndDigest({...r, predict: false}));
    await report(spec, {ok: true, loads, references, sw, controlled: !!navigator.serviceWorker?.controller});
  } catch (e) {
    await report(spec, {ok: false, error: describeError(e)});
  }
}

main();
