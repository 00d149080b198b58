// The main worker's pool of conversion workers (converter.js).  The main worker reads the
// model and writes the output in order (the core's quantize_steps with an executor); each
// chunk it reads goes to an idle conversion worker (a copy of its bytes, transferred) or,
// when all are busy or still booting, is converted by the main worker itself.  So one
// worker is the fallback everywhere: a pool that cannot start (no nested module workers,
// no snapshot, a worker failing to boot) only means fewer helpers.
//
// A chunk stored as it is in a dropped file is not read here: the conversion worker reads
// its byte range of the File itself (submit with raw null; fileOf maps the core's path to
// the File), so the main worker neither reads nor copies it.
//
// Tickets: submit() -> ticket (0: nobody idle); done(t); take(t) -> the worker's reply
// ({parts} | {bad} | {fail}); wait(t) -> a promise settled when done(t); drop(t) forgets a
// chunk the run no longer wants (its worker becomes idle when it has finished it).

const SPARE_CORES_FROM = 4;

export class Pool {
  constructor(url) {
    this.url = url;
    this.members = [];          // {worker, ready, busy: ticket | 0, dead}
    this.tickets = new Map();   // ticket -> {reply, promise, resolve, member}
    this.seq = 0;
    this.target = 0;
    this.spawnFailed = false;
    this.sent = 0;              // chunks sent to conversion workers (reset by the run)
    this.killNext = false;      // tests: kill() found no chunk in flight
    this.fileOf = null;         // path -> File, set by the run (chunks workers read themselves)
    this.cores = 1;             // the machine's (navigator.hardwareConcurrency, from the page)
    this.kit = () => ({});      // -> {snapshot, numpy}: what its workers start from (runtime.js)
  }

  // Whether the conversion workers take every chunk (the first worker then only hands them
  // out and writes).  This worker's reading and writing, with the browser's own reads of the
  // file, keep about two cores busy (1.7 of 2 measured with one worker): with more cores and
  // two conversion workers or more, they do (its own work for 1 GiB F32: 2.05 -> 0.6-0.9 s);
  // else the chunks a wasm kernel converts about as fast as they are handed over (Q4_0, APR
  // Q4) stay there (on 2 cores sending them measured 364 -> 273 MB/s), the K-quants' go.
  get spareCores() {
    return this.cores >= SPARE_CORES_FROM && this.size >= 2;
  }

  // Conversion workers wanted (the main worker converts too: total = n + 1).
  resize(n) {
    this.target = n;
    this.members = this.members.filter((m) => !m.dead);
    while (this.members.length > n) {
      const idle = this.members.findIndex((m) => !m.busy);
      const [m] = this.members.splice(idle >= 0 ? idle : this.members.length - 1, 1);
      this.stop(m, "the pool was made smaller");
    }
    while (this.members.length < n && !this.spawnFailed) {
      let worker;
      try {
        worker = new Worker(this.url, { type: "module", name: `q4apr-convert-${this.members.length + 1}` });
      } catch (err) {   // no nested module workers here: the main worker works alone
        console.warn(`no conversion workers: ${err && err.message}`);
        this.spawnFailed = true;
        break;
      }
      const m = { worker, ready: false, busy: 0, dead: false };
      worker.onmessage = (ev) => this.onReply(m, ev.data || {});
      worker.onerror = (ev) => {   // before it was ready: it could not load (and would not later)
        ev.preventDefault?.();
        this.stop(m, `a conversion worker ${m.ready ? "stopped" : "could not start"} (${ev.message || "script error"})`,
          !m.ready);
      };
      worker.onmessageerror = () => this.stop(m, "a conversion worker's reply could not be read");
      // first message: the runtime snapshot and numpy's files to start from (copies of 21 and
      // 13 MB, ~20 ms; reading the snapshot from IndexedDB took 0.15 s, fetching and unpacking
      // numpy's wheel 0.2-0.3 s, competing with the runtime's own files)
      worker.postMessage({ kit: this.kit() });
      this.members.push(m);
    }
  }

  get size() {
    return this.members.filter((m) => !m.dead).length;
  }

  get readyCount() {
    return this.members.filter((m) => m.ready && !m.dead).length;
  }

  onReply(m, d) {
    if (d.ready) { m.ready = true; return; }
    if (d.failed) { this.stop(m, `a conversion worker could not start: ${d.failed}`, true); return; }
    if (m.busy === d.id) m.busy = 0;
    this.settle(d.id, d);
  }

  settle(t, reply) {
    const rec = this.tickets.get(t);
    if (!rec || rec.reply) return;
    rec.reply = reply;
    rec.resolve();
  }

  // A worker is gone: its chunk in flight fails the run (never a wrong file), and a crashed
  // one is replaced at once (one that could not boot is not: it would fail again).
  stop(m, why, bootFailed = false) {
    if (m.dead) return;
    m.dead = true;
    if (bootFailed) this.spawnFailed = true;   // it would fail again: work with those there are
    try { m.worker.terminate(); } catch (_) { /* gone */ }
    console.warn(why);
    if (m.busy) this.settle(m.busy, { fail: why });
    m.busy = 0;
    if (!bootFailed && this.members.includes(m)) setTimeout(() => this.resize(this.target), 0);
  }

  // job: JSON text; raw: the chunk's bytes (a PyProxy of a memoryview, copied here) or a
  // typed array, or null: the worker reads job.size bytes at job.at of job.path's File.
  submit(job, raw) {
    const m = this.members.find((x) => x.ready && !x.busy && !x.dead);
    if (!m) return 0;
    let msg;
    if (raw == null) {
      const { path, at, size } = JSON.parse(job);
      const file = this.fileOf && this.fileOf(path);
      if (!file) return 0;
      msg = [{ job, file, start: at, end: at + size }, []];
    } else {
      let copy;
      if (ArrayBuffer.isView(raw)) {
        copy = raw.slice().buffer;
      } else {
        const pb = raw.getBuffer("u8");
        try { copy = pb.data.slice().buffer; } finally { pb.release(); }
      }
      msg = [{ job, raw: copy }, [copy]];
    }
    const t = ++this.seq;
    const rec = { reply: null, member: m };
    rec.promise = new Promise((resolve) => { rec.resolve = resolve; });
    this.tickets.set(t, rec);
    m.busy = t;
    this.sent++;
    m.worker.postMessage({ id: t, ...msg[0] }, msg[1]);
    if (this.killNext) {
      this.killNext = false;
      this.stop(m, "a conversion worker stopped (killed)");
    }
    return t;
  }

  done(t) {
    const rec = this.tickets.get(t);
    return !rec || rec.reply !== null;
  }

  wait(t) {
    const rec = this.tickets.get(t);
    return rec ? rec.promise : Promise.resolve();
  }

  take(t) {
    const rec = this.tickets.get(t);
    this.tickets.delete(t);
    return rec && rec.reply ? rec.reply : { fail: "a chunk's conversion was lost" };
  }

  drop(t) {
    this.tickets.delete(t);
  }

  // For the tests: a worker crashes with a chunk in flight (now, or at the next chunk sent).
  kill() {
    const m = this.members.find((x) => x.busy && !x.dead);
    if (m) this.stop(m, "a conversion worker stopped (killed)");
    else this.killNext = true;
  }
}
