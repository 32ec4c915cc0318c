// shardsync.js: load a model that shardsync publishes, with progress, and keep it for
// when the web server cannot be reached. shardsync writes this file to the root of
// site_dir (served as /models/shardsync.js by `shardsync nginx-config`) and keeps it
// current. Plain ES2017, no build step; the page needs only TF.js (window.tf).
//
//   const r = await shardsync.load('/models/blazeface/blazeface.json',
//                                  {onProgress: (f) => { bar.value = f; }});
//   r.model     a tf.GraphModel, a tf.LayersModel, or (bare weights manifest) the
//               named tensors, as tf.io.loadWeights gives them
//   r.version   the version loaded (the site's versions/<version>/)
//   r.offline   true when the server could not be reached and the cache served it
//
// Why it is shaped like this (docs/design.md, "The page side"):
// - Every shard URL of the entry point names its version (versions/<v>/...), and
//   only those URLs are ever fetched: a version published while the page loads
//   cannot mix into it, whatever HTTP caches or this cache hold.
// - Each version's shards and manifest are kept in the Cache API under those same
//   URLs. The manifest is put last and deleted first, so a version whose manifest is
//   in the cache is whole: offline, the newest such version is loaded.
// - Cached versions other than the current one are dropped when the site no longer
//   keeps them: a HEAD of their manifest answered 404 or 410. The site's own
//   keep_versions and grace period decide, so the page keeps exactly what the
//   server could still serve, and nothing the server has let go.
(function () {
  'use strict';

  // One Cache for every model of the site: keys are the version-named URLs.
  const CACHE_NAME = 'shardsync';
  // On a cached version manifest: when (ms since the epoch) a load last found it
  // current on the site. Offline, the highest wins ("the newest version held").
  const SEEN_HEADER = 'x-shardsync-seen';
  // Bytes per element as stored in a shard (a quantized weight counts its quantized
  // dtype): docs/design.md, "The TF.js formats it must understand".
  const DTYPE_BYTES = {float32: 4, int32: 4, bool: 1, complex64: 8, uint8: 1, uint16: 2, float16: 2};
  // What a HEAD of a cached version's manifest answers once the site dropped it.
  const GONE = [404, 410];

  function hasCache() {
    return typeof caches !== 'undefined';  // missing outside a secure context
  }

  // The manifest URL's directory and query string, as TF.js builds shard URLs:
  // directory + path + query.
  function splitUrl(url) {
    const abs = new URL(url, location.href);
    abs.hash = '';
    const query = abs.search;
    abs.search = '';
    const href = abs.href;
    const cut = href.lastIndexOf('/') + 1;
    return {dir: href.slice(0, cut), file: href.slice(cut), query};
  }

  function groupsOf(doc) {
    const groups = Array.isArray(doc) ? doc : doc && doc.weightsManifest;
    if (!Array.isArray(groups)) throw new Error('not a TF.js manifest: no weight groups');
    return groups;
  }

  // 'graph-model', 'layers-model' or 'weights-manifest', as shardsync reads it.
  function formatOf(doc) {
    if (Array.isArray(doc)) return 'weights-manifest';
    if (doc.format === 'graph-model' || doc.format === 'layers-model') return doc.format;
    if (doc.format != null) throw new Error(`unknown model format ${JSON.stringify(doc.format)}`);
    return doc.modelTopology && doc.modelTopology.node ? 'graph-model' : 'layers-model';
  }

  // The one version every path of an entry point names; an Error if any path does
  // not point into versions/<v>/ or two name different versions.
  function versionOfEntry(groups) {
    let version = null;
    for (const g of groups) {
      for (const p of g.paths) {
        const m = /^versions\/([^/]+)\/./.exec(p);
        if (!m) throw new Error(`shard path ${JSON.stringify(p)} is not under versions/<version>/: not a shardsync entry point`);
        if (version !== null && m[1] !== version) throw new Error(`the entry point names two versions, ${version} and ${m[1]}`);
        version = m[1];
      }
    }
    if (version === null) throw new Error('the manifest lists no shards');
    return version;
  }

  // Bytes a group's shards hold, or null where its size is known only from the data
  // (string weights). shardsync checks this sum before publishing; checking it here
  // too keeps a truncated answer out of the cache.
  function groupBytes(group) {
    let total = 0;
    for (const w of group.weights || []) {
      const dtype = w.quantization ? w.quantization.dtype : w.dtype;
      const size = DTYPE_BYTES[dtype];
      if (size === undefined) return null;
      total += size * (w.shape || []).reduce((a, b) => a * b, 1);
    }
    return total;
  }

  // {url, group} of every shard, in manifest order; urls rooted at base.
  function shardList(groups, base, query) {
    const out = [];
    groups.forEach((g, gi) => { for (const p of g.paths) out.push({url: base + p + query, group: gi}); });
    return out;
  }

  // Calls onProgress with strictly rising fractions, below 1 until done() gives 1.
  function progressMeter(onProgress, total) {
    let received = 0;
    let last = -1;
    const tell = (f) => {
      if (f > last) {
        last = f;
        if (onProgress) onProgress(f);
      }
    };
    tell(0);
    return {
      add(n) {
        received += n;
        const f = total > 0 ? received / total : 0;
        if (f < 1) tell(f);
      },
      grow(n) { total += n; },
      done() { tell(1); },
    };
  }

  function concat(chunks, length) {
    const out = new Uint8Array(length);
    let off = 0;
    for (const c of chunks) { out.set(c, off); off += c.length; }
    return out.buffer;
  }

  // A whole body as an ArrayBuffer, counting bytes into the meter as they arrive.
  async function readBody(resp, meter) {
    if (!resp.body || !resp.body.getReader) {
      const buf = await resp.arrayBuffer();
      meter.add(buf.byteLength);
      return buf;
    }
    const reader = resp.body.getReader();
    const chunks = [];
    let length = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      chunks.push(value);
      length += value.length;
      meter.add(value.length);
    }
    return concat(chunks, length);
  }

  // Hands TF.js the bytes already read: a tf.io IOHandler (graph and layers models)
  // or tf.io.weightsLoaderFactory's fetch function (a bare weights manifest).
  async function buildModel(doc, format, base, query, buffers) {
    if (format === 'weights-manifest') {
      // weightsLoaderFactory asks for base + path (no query string), in manifest order.
      const byUrl = new Map(shardList(doc, base, '').map((s, i) => [s.url, buffers[i]]));
      const fetchWeights = async (urls) => urls.map((u) => {
        if (!byUrl.has(u)) throw new Error(`TF.js asked for ${u}, which the manifest does not list`);
        return byUrl.get(u);
      });
      // loadWeights joins base and path itself: hand it the paths' own base.
      return tf.io.weightsLoaderFactory(fetchWeights)(doc, base);
    }
    const handler = {
      load: () => tf.io.getModelArtifactsForJSON(doc, async (manifest) => [
        tf.io.getWeightSpecs(manifest), buffers]),
    };
    return format === 'graph-model' ? tf.loadGraphModel(handler) : tf.loadLayersModel(handler);
  }

  // The manifest kept for a version: the entry point with its paths relative to the
  // version's directory again, i.e. what the site serves at versions/<v>/<file>.
  function versionManifest(doc, version) {
    const copy = JSON.parse(JSON.stringify(doc));
    const prefix = `versions/${version}/`;
    for (const g of groupsOf(copy)) g.paths = g.paths.map((p) => p.slice(prefix.length));
    return copy;
  }

  function manifestResponse(doc, seen) {
    return new Response(JSON.stringify(doc), {headers: {
      'content-type': 'application/json', [SEEN_HEADER]: String(seen)}});
  }

  // Versions of the model at {dir, file, query} that the cache holds whole (its
  // manifest is there), newest first: [{version, key, seen}].
  async function cachedVersions(cache, where) {
    const prefix = `${where.dir}versions/`;
    const tail = `/${where.file}${where.query}`;
    const out = [];
    for (const req of await cache.keys()) {
      const u = req.url;
      if (!u.startsWith(prefix) || !u.endsWith(tail)) continue;
      const version = u.slice(prefix.length, u.length - tail.length);
      if (!version || version.includes('/')) continue;
      const resp = await cache.match(req);
      out.push({version, key: u, seen: Number(resp && resp.headers.get(SEEN_HEADER)) || 0});
    }
    out.sort((a, b) => b.seen - a.seen || (a.version < b.version ? -1 : 1));
    return out;
  }

  // Drop one cached version: its manifest first (so it stops counting as whole),
  // then everything else under its directory.
  async function dropVersion(cache, where, version) {
    const dir = `${where.dir}versions/${version}/`;
    await cache.delete(`${dir}${where.file}${where.query}`);
    for (const req of await cache.keys()) if (req.url.startsWith(dir)) await cache.delete(req);
  }

  // Drop the cached versions, other than `current`, that the site no longer keeps.
  // A network failure or any other answer keeps the version: only the site's own
  // "gone" lets one go. Returns the versions dropped.
  async function evict(cache, where, current, fetchFunc) {
    const dropped = [];
    for (const c of await cachedVersions(cache, where)) {
      if (c.version === current) continue;
      let status;
      try {
        status = (await request(fetchFunc, c.key, {method: 'HEAD', cache: 'no-store'}, false)).status;
      } catch (e) {
        continue;  // no answer: nothing learnt, keep it
      }
      if (GONE.includes(status)) {
        await dropVersion(cache, where, c.version);
        dropped.push(c.version);
      }
    }
    return dropped;
  }

  // The server gave no answer (fetch rejected, or a body broke off): the one failure
  // that sends a load to the cache. Any other error (an HTTP status, a bad manifest,
  // a bug) is the page's to see.
  class NetworkError extends Error {
    constructor(url, cause) {
      super(`no answer from ${url}: ${cause}`);
      this.name = 'NetworkError';
      this.cause = cause;
    }
  }

  async function request(fetchFunc, url, init, isBinary) {
    try {
      return await fetchFunc(url, init, {isBinary});
    } catch (e) {
      throw new NetworkError(url, e);
    }
  }

  async function loadOnline(url, where, opts, entryResp) {
    const fetchFunc = opts.fetchFunc;
    if (!entryResp.ok) throw new Error(`GET ${url}: HTTP ${entryResp.status}`);
    const doc = JSON.parse(await entryResp.text());
    const groups = groupsOf(doc);
    const format = formatOf(doc);
    const version = versionOfEntry(groups);
    const shards = shardList(groups, where.dir, where.query);
    const sizes = groups.map(groupBytes);
    const cache = hasCache() ? await caches.open(CACHE_NAME) : null;
    const hits = cache ? await Promise.all(shards.map((s) => cache.match(s.url))) : shards.map(() => undefined);
    // Total bytes from the manifest; a string group's shards add their Content-Length
    // when it arrives (or their cached length), so the fraction never falls.
    const meter = progressMeter(opts.onProgress, sizes.reduce((a, n) => a + (n || 0), 0));
    const fromCache = [];
    const buffers = await Promise.all(shards.map(async (s, i) => {
      let resp = hits[i];
      if (resp) {
        fromCache.push(s.url);
      } else {
        resp = await request(fetchFunc, s.url, {}, true);
        if (!resp.ok) throw new Error(`GET ${s.url}: HTTP ${resp.status}`);
      }
      if (sizes[s.group] === null) meter.grow(Number(resp.headers.get('content-length')) || 0);
      try {
        return await readBody(resp, meter);
      } catch (e) {
        throw new NetworkError(s.url, e);
      }
    }));
    groups.forEach((g, gi) => {
      if (sizes[gi] === null) return;
      const got = shards.reduce((a, s, i) => a + (s.group === gi ? buffers[i].byteLength : 0), 0);
      if (got !== sizes[gi]) throw new Error(`weight group ${gi} of ${url} is ${got} bytes, its weights need ${sizes[gi]}`);
    });
    let cacheError = null;
    if (cache) {
      try {
        await Promise.all(shards.map((s, i) => (hits[i] ? null : cache.put(s.url, new Response(buffers[i], {
          headers: {'content-type': 'application/octet-stream'}})))));
        // Last: from now on the version counts as whole.
        await cache.put(`${where.dir}versions/${version}/${where.file}${where.query}`,
                        manifestResponse(versionManifest(doc, version), Date.now()));
      } catch (e) {
        cacheError = String(e);  // e.g. over quota: the load itself still succeeds
      }
    }
    const [model, evicted] = await Promise.all([
      buildModel(doc, format, where.dir, where.query, buffers),
      cache && !cacheError ? evict(cache, where, version, fetchFunc) : [],
    ]);
    meter.done();
    return {model, version, format, offline: false, fromCache, evicted, cacheError};
  }

  async function loadOffline(url, where, opts, why) {
    const cache = hasCache() ? await caches.open(CACHE_NAME) : null;
    const held = cache ? await cachedVersions(cache, where) : [];
    for (const c of held) {
      const doc = await (await cache.match(c.key)).json();
      const groups = groupsOf(doc);
      const base = `${where.dir}versions/${c.version}/`;
      const shards = shardList(groups, base, where.query);
      const resps = await Promise.all(shards.map((s) => cache.match(s.url)));
      if (resps.some((r) => !r)) continue;  // not whole after all (storage trimmed): the next
      const sizes = groups.map(groupBytes);
      const total = sizes.reduce((a, n) => a + (n || 0), 0) + shards.reduce(
        (a, s, i) => a + (sizes[s.group] === null ? Number(resps[i].headers.get('content-length')) || 0 : 0), 0);
      const meter = progressMeter(opts.onProgress, total);
      const buffers = await Promise.all(resps.map((r) => readBody(r, meter)));
      const model = await buildModel(doc, formatOf(doc), base, where.query, buffers);
      meter.done();
      return {model, version: c.version, format: formatOf(doc), offline: true,
              fromCache: shards.map((s) => s.url), evicted: [], cacheError: null, error: String(why)};
    }
    const err = new Error(`cannot reach ${url} (${why}) and no whole version of it is cached` +
                          (cache ? '' : ' (no Cache API here: the page is not a secure context)'));
    err.cause = why;
    throw err;
  }

  // Load the model whose shardsync entry point is `url` (e.g.
  // '/models/<name>/<manifest>'). Options: onProgress(fraction), called with rising
  // fractions from 0 to exactly 1 over the bytes of every shard; fetchFunc(url,
  // init, {isBinary}), used for every request (default: fetch), as TF.js's own
  // option of that name. Resolves to {model, version, format, offline, fromCache
  // (shard URLs the cache served), evicted (cached versions dropped), cacheError}.
  // When the entry point cannot be fetched at all (a network error, not an HTTP
  // error: a 404 means the model is gone), or a shard fails on the network, the
  // newest version the cache holds whole is loaded instead, with offline: true.
  async function load(url, options) {
    // The IOHandler helpers used here are TF.js 4's (the tests run 4.22).
    if (typeof tf === 'undefined' || !tf.io || !tf.io.getModelArtifactsForJSON) {
      throw new Error('shardsync.js needs TF.js 4 (tf.min.js) on the page, loaded before it runs load()');
    }
    const opts = Object.assign({fetchFunc: (u, init) => fetch(u, init)}, options || {});
    const where = splitUrl(url);
    try {
      const entryResp = await request(opts.fetchFunc, url, {cache: 'no-cache'}, false);
      return await loadOnline(url, where, opts, entryResp);
    } catch (e) {
      // No answer for the entry point, or the server went away mid-load.
      if (!(e instanceof NetworkError)) throw e;
      return loadOffline(url, where, opts, e.cause);
    }
  }

  // The versions of `url`'s model the cache holds whole, newest first.
  async function cached(url) {
    if (!hasCache()) return [];
    const list = await cachedVersions(await caches.open(CACHE_NAME), splitUrl(url));
    return list.map((c) => c.version);
  }

  window.shardsync = {load, cached, CACHE_NAME};
})();
