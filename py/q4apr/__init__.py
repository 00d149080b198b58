"""q4apr: model weights to 4 bits (APR Q4 or GGML Q4_0), with the report of what changed.

The one core that the command line and the browser worker both call; it needs
only the standard library and numpy, so it runs the same under Pyodide.
"""

from .errors import BadInput, Cancelled, Q4Error
from .inspection import inspect_model, verify_file
from .formats import open_model
from .model import Model, TensorEntry
from .pipeline import Options, Progress, output_name, quantize, quantize_steps
from .report import Report
from .sinks import CallbackSink, FileSink, MemorySink

__version__ = "0.1.0"

__all__ = ["BadInput", "Cancelled", "Q4Error", "inspect_model", "verify_file", "Model",
           "TensorEntry", "open_model", "Options", "Progress", "output_name", "quantize",
           "quantize_steps", "Report", "CallbackSink", "FileSink", "MemorySink"]
