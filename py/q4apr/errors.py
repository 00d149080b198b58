"""The errors q4apr raises on purpose: everything a user can cause is a Q4Error."""


class Q4Error(Exception):
    """Base of every error q4apr reports to a person (CLI exit 2, page message)."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class BadInput(Q4Error):
    """The input is malformed or unsupported; the message names the file and tensor."""

    def __init__(self, problem, file=None, tensor=None):
        where = []
        if file:
            where.append(str(file))
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        super().__init__(": ".join(where + [problem]) if where else problem)
        self.file, self.tensor, self.problem = file, tensor, problem

    def __reduce__(self):   # from a worker process: the same file, tensor and problem
        return type(self), (self.problem, self.file, self.tensor)


class Cancelled(Q4Error):
    """The run was cancelled by the person; no output was kept."""

    def __init__(self, message="cancelled"):
        super().__init__(message)
