// The reading thread of worker.js's read-ahead: reads byte ranges of the page's files
// with FileReaderSync here, off the thread that runs Python, and transfers each buffer
// back (no copy).  Classic worker; one request at a time, in order.
const reader = new FileReaderSync();

self.onmessage = (e) => {
  const { id, file, start, end } = e.data;
  try {
    const buf = reader.readAsArrayBuffer(file.slice(start, end));
    self.postMessage({ id, buf }, [buf]);
  } catch (err) {
    self.postMessage({ id, error: String((err && err.message) || err) });
  }
};
