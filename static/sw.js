// q4apr service worker: precache the whole site at install, serve it cache-first,
// so that after one visit the page works offline.  build.sh replaces the two
// placeholders (a content hash, and a JSON array of every file's relative URL).

const VERSION = "__BUILD_VERSION__";
const SCOPE = new URL("./", self.location.href);
// One cache per deployment path: two copies of the site on one origin keep their own.
const PREFIX = `q4apr:${SCOPE.pathname}:`;
const CACHE = PREFIX + VERSION;
// Unbuilt (placeholder not replaced), this evaluates to an empty list instead of throwing.
const PRECACHE = typeof __PRECACHE__ !== "undefined" ? __PRECACHE__ : [];

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // "no-cache": revalidate with the server (cheap 304s after the page's own
    // downloads), never take a stale copy from the HTTP cache.
    await cache.addAll(PRECACHE.map((u) => new Request(new URL(u, SCOPE).href, { cache: "no-cache" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    const names = await caches.keys();
    await Promise.all(names.filter((n) => n.startsWith(PREFIX) && n !== CACHE).map((n) => caches.delete(n)));
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;   // network, untouched
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    let hit = await cache.match(req, { ignoreVary: true });
    if (!hit && req.mode === "navigate") {
      // The page itself, whatever query or trailing name it was opened with.
      hit = (await cache.match(new URL("./", SCOPE).href)) || (await cache.match(new URL("index.html", SCOPE).href));
    }
    if (hit) return hit;
    return fetch(req);
  })());
});
