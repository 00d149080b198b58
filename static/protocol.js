// The page <-> worker message protocol (one small protocol, Squoosh style).
//
// page -> worker
//   {type: "quantize", id, files: [File...], options: {format, type, keep_embeddings_f16,
//        keep_output_f16, pure, skip: [...], chunk_bytes?, allow_non_finite}}
//        (the keys of the core's Options.from_dict: anything else is refused by the core)
//   {type: "inspect", id, files: [File...]}
//   {type: "describe", id, files: [File...]}
//   {type: "cancel", id}
//   {type: "configure", workers, cores}   (workers in all, this one included: the pool is
//                                  started; cores: navigator.hardwareConcurrency)
//   {type: "kill-converter"}       (tests only: a conversion worker stops as if it crashed)
//   quantize may carry `workers` and `cores` too (as configure, before the run).
//   A model folder (quantize, inspect, describe) also carries `folder`: the folder's name.
//   The worker mounts its files in a directory of that name and hands the core the
//   directory, as the CLI gets it (the name is the model's and the download's).
//
// worker -> page
//   {type: "boot", stage: "runtime"|"numpy"|"core", progress: 0..1}
//   {type: "ready", versions?: {python, numpy, pyodide, q4apr}}
//   {type: "progress", id, done, total, tensor}      (at most every 100 ms: q4apr.web)
//   {type: "chunk", id, data: ArrayBuffer}            (transferred; output bytes after the head)
//   {type: "truncate", id, size}                       (drop chunk bytes past `size`: a tensor is rewritten)
//   {type: "done", id, report, head: ArrayBuffer,     (the file is head + all chunks, in order;
//    workers: {total, pooled}}                          workers converting, chunks the pool took)
//   {type: "inspected", id, info}
//   {type: "described", id, summary}                   (q4apr.folder.Description.summary();
//                                                       null for a lone weights file)
//   {type: "error", id, message}                       (id null: the worker failed to start)
//   {type: "cancelled", id}
//
// A job ends with exactly one of done / inspected / described / error / cancelled.

export const BOOT_STAGES = ["runtime", "numpy", "core"];

export const MSG = Object.freeze({
  QUANTIZE: "quantize",
  INSPECT: "inspect",
  DESCRIBE: "describe",
  CANCEL: "cancel",
  CONFIGURE: "configure",
  KILL_CONVERTER: "kill-converter",
  BOOT: "boot",
  READY: "ready",
  PROGRESS: "progress",
  CHUNK: "chunk",
  TRUNCATE: "truncate",
  DONE: "done",
  INSPECTED: "inspected",
  DESCRIBED: "described",
  ERROR: "error",
  CANCELLED: "cancelled",
});

