"""q4apr: model weights to 4 bits (APR Q4 or GGML Q4_0), with the report of what changed.

The one core that the command line (`q4apr`, or `python -m q4apr`) and the browser
worker both call; it needs only the standard library and numpy (>= 2.0; Pyodide 0.27.7
ships 2.0.2), so it runs the same under Pyodide.  Everything below is importable from
`q4apr`:

    import q4apr
    with q4apr.open_model(["model.safetensors"]) as m:
        report = q4apr.quantize(m, q4apr.FileSink("model.apr"), q4apr.Options(format="apr"))
    print(report.to_dict()["totals"])

open_model(paths: str | list[str]) -> Model
    Detects the format by magic bytes (then extension): safetensors (one file, or shards
    + model.safetensors.index.json), gguf, apr, npy, npz.  Raises BadInput.
    Model: .format ('safetensors'|'gguf'|'apr'|'npy'|'npz'), .paths, .name (stem of the
    first input file, shard suffix removed), .metadata (JSON-able dict),
    .tensors: list[TensorEntry], .close(); also a context manager.
    TensorEntry: .name, .shape (tuple of int, outermost first), .dtype (a DType; .name is
    'F32','F16','BF16','F64','I8','I16','I32','I64','U8','BOOL','APR_Q4','Q4_0','Q8_0',...),
    .nbytes

Options(format='apr'|'gguf', type='Q4_0'|'Q4_K_M', keep_embeddings_f16=False,
        keep_output_f16=False, pure=False, skip=(), chunk_bytes=4 << 20,
        allow_non_finite=False, threads=1)
    type: llama-quantize's mixture (q4apr.mixtures; APR gets it in Aprender's codes).
    threads > 1 converts that many chunks at once (the CLI's --threads, default every
    core): in forked worker processes on Linux (q4apr.processes), in a thread pool
    elsewhere; the output, the report and the first error are those of 1.
    A dataclass; Options.from_dict(d) takes the same snake_case keys (unknown keys ->
    BadInput).  A NaN or Inf in any float tensor written (quantized, converted, kept or
    passed through; for block types, a non-finite block scale) is refused with BadInput
    naming the tensor and the first flat index, unless allow_non_finite: then the values
    are written as they are (a tensor that would be quantized is kept at F32, since a
    4-bit block cannot hold them) and the report counts them per tensor.

quantize_steps(model, sink, options) -> generator
    Yields Progress(done: int, total: int, tensor: str) after each chunk (bytes of
    input); its return value (StopIteration.value) is the Report.  Closing the
    generator early aborts the sink (no partial output).
quantize(model, sink, options, progress=None, cancel=None) -> Report
    The synchronous driver; progress(Progress) is called per step; cancel() -> True
    raises Cancelled.

Report.to_dict() -> {
    "input":  {"format", "files", "bytes"},
    "output": {"format", "bytes", "name"},
    "model": a folder's description summary, or None (a lone weights file),
    "runtimes": [{"runtime", "loads", "verdict", "why"}],
    "tensors": [{"name", "shape", "dtype_in", "dtype_out", "bytes_in", "bytes_out",
                 "action", "reason", "mse" (float|None), "max_abs_err" (float|None),
                 "warning" (str|None), "non_finite" (int: NaN/Inf values written),
                 "snr_db", "source" (the input's name when renamed)}],
    "totals": {"params", "bytes_in", "bytes_out", "ratio", "bits_per_weight", "file_ratio",
               "seconds", "tensors", "quantized", "non_finite", "snr_db"}}

Sinks (where the output goes).  The output file is `head + data`: the data is streamed
first, the head (header, metadata, tensor index) is only final at the end.
CallbackSink(on_data, on_truncate=None): on_data(b: bytes) gets each data chunk in
    order; on_truncate(size) says to drop the data past `size` bytes (a tensor whose
    planned type cannot hold it, e.g. a Q4 scale that overflows f16, is written again at
    F32); after the run, sink.head (bytes) is the part that goes BEFORE all the chunks.
MemorySink(): collects everything; .getvalue() -> bytes of the whole file.
FileSink(path): writes path atomically (temp file in the same folder, then rename);
    refuses to write over an input; leaves nothing on error.

output_name(inputs: str | list[str], format: str) -> 'model.apr' | 'model.Q4_0.gguf'
inspect_model(model) -> dict {"format", "metadata", "tensors": [{"name", "shape",
    "dtype", "nbytes"}], ...}
verify_file(path) -> dict {"ok": bool, "checks": [{"name", "ok", "detail"}]}

Errors: Q4Error(Exception) (.message), BadInput(Q4Error) (names file and tensor),
Cancelled(Q4Error).  Nothing else escapes for bad input.

Input rules beyond the format specs (a stranger's file is hostile): safetensors gaps and
trailing bytes are refused (as the reference reader does); APR data must be 64-aligned
and not overlap; JSON may nest at most 64 levels, may not repeat a key, and must be
finite; at most 1M tensors per file, 4M strings/arrays inside GGUF metadata, headers and
indexes at most 100 MB (safetensors) / 64 MB (APR index).  Declared sizes are checked
against the file's size before anything is allocated.
"""

from ._version import __version__
from .errors import BadInput, Cancelled, Q4Error
from .inspection import inspect_model, verify_file
from .formats import open_model
from .model import Model, TensorEntry
from .pipeline import Options, Progress, output_name, quantize, quantize_steps
from .report import Report
from .sinks import CallbackSink, FileSink, MemorySink

__all__ = ["BadInput", "Cancelled", "Q4Error", "inspect_model", "verify_file", "Model",
           "TensorEntry", "open_model", "Options", "Progress", "output_name", "quantize",
           "quantize_steps", "Report", "CallbackSink", "FileSink", "MemorySink", "__version__"]
