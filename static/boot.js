// Starts the page's Python worker as soon as the page begins to load: app.js is a module,
// which runs only once the whole page is parsed and its imports are fetched, so starting
// the worker there cost the cold start ~0.1 s.  Classic script (the CSP allows no inline
// one).  app.js adopts the worker and the events it sent before app.js listened.
(() => {
  try {
    const worker = new Worker(new URL("worker.js", document.currentScript.src), { type: "module", name: "q4apr" });
    const early = [];
    worker.onmessage = worker.onerror = worker.onmessageerror = (ev) => {
      if (ev.type === "error") ev.preventDefault();
      early.push(ev);
    };
    self.q4aprEarlyWorker = { worker, early };
  } catch (_) {
    // app.js starts it (and says why it cannot)
  }
})();
