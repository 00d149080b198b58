"""Where an output file goes. The data streams first; the head (header, metadata,
index) is final only at the end, so every sink reserves room for it.

A sink can also drop data back to a mark: when a tensor turns out not to fit
its planned type midway (a scale that overflows f16), the pipeline rewinds to
the tensor's start and writes it again at F32.
"""

import os
import tempfile

from .errors import BadInput, Q4Error


class Sink:
    def begin(self, head_len):
        self.head_len = head_len
        self.size = 0          # data bytes written so far

    def write(self, data):
        raise NotImplementedError

    def truncate(self, size):
        raise NotImplementedError

    def finish(self, head):
        raise NotImplementedError

    def abort(self):
        pass


class MemorySink(Sink):
    """The whole file in memory: for tests and small models."""

    def begin(self, head_len):
        super().begin(head_len)
        self._buf = bytearray(head_len)

    def write(self, data):
        self._buf += data
        self.size += len(data)

    def truncate(self, size):
        del self._buf[self.head_len + size:]
        self.size = size

    def finish(self, head):
        self._buf[: len(head)] = head

    def getvalue(self):
        return bytes(self._buf)


class CallbackSink(Sink):
    """Hands each data chunk to on_data(bytes) as it comes (the browser worker posts it on);
    on_truncate(size) is told to drop data past `size`. sink.head goes before all the data."""

    def __init__(self, on_data, on_truncate=None):
        self.on_data, self.on_truncate = on_data, on_truncate
        self.head = None

    def write(self, data):
        self.on_data(bytes(data))
        self.size += len(data)

    def truncate(self, size):
        if self.on_truncate is None:
            raise Q4Error("this output cannot be rewound (no on_truncate given)")
        self.on_truncate(size)
        self.size = size

    def finish(self, head):
        self.head = bytes(head)


class FileSink(Sink):
    """Writes `path` atomically: a temporary file beside it, renamed at the end; never over
    an input; nothing is left behind on error or cancel."""

    def __init__(self, path, inputs=()):
        self.path = os.path.abspath(path)
        for p in inputs:
            if os.path.exists(self.path) and os.path.samefile(p, self.path):
                raise BadInput("the output would overwrite this input; choose another name", p)
        self._f = self._tmp = None

    def begin(self, head_len):
        super().begin(head_len)
        folder = os.path.dirname(self.path)
        try:
            fd, self._tmp = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".",
                                             suffix=".part", dir=folder)
        except OSError as e:
            raise Q4Error(f"cannot write in {folder}: {e.strerror or e}") from None
        self._f = os.fdopen(fd, "w+b")
        self._f.write(bytes(head_len))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)   # mkstemp's 0600 is not what a user expects

    def write(self, data):
        self._f.write(data)
        self.size += len(data)

    def truncate(self, size):
        self._f.flush()
        self._f.truncate(self.head_len + size)
        self._f.seek(self.head_len + size)
        self.size = size

    def finish(self, head):
        self._f.seek(0)
        self._f.write(head)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)
        self._tmp = None

    def abort(self):
        """Close and remove the temporary file, whatever step the run stopped at."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None
