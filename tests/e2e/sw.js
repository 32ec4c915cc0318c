// The service worker a kiosk page commonly installs to keep working offline:
// cache-first for weight shards (by URL, forever), network for manifests.
// Anything on the page's own origin (pages, TF.js, the test's collector)
// passes through untouched. Stats are answered to a {stats: true} message.
'use strict';

const CACHE = 'tfjs-shards';
const stats = {hits: 0, misses: 0, manifests: 0, stored: []};

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

function isShard(url) {
  return url.origin !== self.location.origin && !url.pathname.endsWith('.json');
}

async function cacheFirst(request) {
  const cache = await caches.open(CACHE);
  const hit = await cache.match(request);
  if (hit) {
    stats.hits++;
    return hit;
  }
  stats.misses++;
  const response = await fetch(request);
  if (response.ok) {
    await cache.put(request, response.clone());
    stats.stored.push(request.url);
  }
  return response;
}

self.addEventListener('fetch', (event) => {
  if (event.request.method !== 'GET') return;
  const url = new URL(event.request.url);
  if (url.origin === self.location.origin) return;
  if (isShard(url)) {
    event.respondWith(cacheFirst(event.request));
  } else {
    stats.manifests++;  // network, as the browser would do without us
  }
});

self.addEventListener('message', (event) => {
  if (event.data && event.data.stats) event.ports[0].postMessage(stats);
});
