"""A Hugging Face model folder: weights plus what makes them a model (config, tokenizer).

A folder arrives as a directory (CLI) or as its files listed one by one (the page, or
a shell glob); both give the same Model. Files that play no part (README, .bin, images,
subfolders such as onnx/) are ignored and listed as such, never refused.
"""

import os
from dataclasses import dataclass, field

from .errors import BadInput
from .model import load_json, read_small  # noqa: F401  (read_small: callers')

CONFIG = "config.json"
# files the tokenizer reader may use, by name
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja", "chat_template.json",
                   "tokenizer.model", "added_tokens.json")
# sentence-transformers' description of an embedding model: its pooling (converter's
# _try_set_pooling_type); the Pooling module's config lies in a subfolder named there
MODULES = "modules.json"
MAX_CONFIG_BYTES = 16 << 20      # a config or tokenizer_config; tokenizer.json may be larger


@dataclass
class Description:
    """What a folder says beyond its tensors: architecture, hyper-parameters, tokenizer."""
    name: str
    config: dict
    family: object          # the q4apr.archs module of this architecture
    hparams: dict
    tokenizer: object       # a q4apr.tokenizer.Tokenizer
    files: dict             # basename -> path of the config and tokenizer files used
    ignored: list = field(default_factory=list)

    def summary(self):
        hp = self.hparams
        return {"name": self.name, "architecture": hp["model_type"],
                "gguf_architecture": self.family.GGUF_ARCH, "layers": hp["num_layers"],
                "hidden_size": hp["hidden_size"], "heads": hp["num_heads"],
                "kv_heads": hp["num_kv_heads"], "vocab_size": hp["vocab_size"],
                "context": hp.get("max_position_embeddings"), "tied": hp.get("tied", False),
                "tokenizer": self.tokenizer.summary(), "files": sorted(self.files),
                "ignored": list(self.ignored)}


def _expand(paths):
    """(top-level files, {relative name: path} of files in subfolders, folder name)."""
    files, ignored, dirs = [], {}, []
    for p in paths:
        if os.path.isdir(p):
            dirs.append(p)
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    if dirpath == p or os.path.normpath(dirpath) == os.path.normpath(p):
                        files.append(full)
                    else:
                        ignored[os.path.relpath(full, p).replace(os.sep, "/")] = full
        else:
            files.append(p)
    if dirs:
        name = os.path.basename(os.path.normpath(dirs[0]))
    else:
        name = os.path.basename(os.path.dirname(os.path.abspath(files[0]))) if files else ""
    return files, ignored, name


def is_model_folder(paths):
    """A directory, or a list of files holding a config.json: a model folder."""
    return any(os.path.isdir(p) for p in paths) or any(
        os.path.basename(p) == CONFIG for p in paths)


def classify(files):
    """(weights, {basename: path} of config/tokenizer files, ignored basenames)."""
    weights, parts, ignored = [], {}, []
    for p in files:
        base = os.path.basename(p)
        low = base.lower()
        if low.endswith(".safetensors") or low.endswith(".safetensors.index.json"):
            weights.append(p)
        elif base in (CONFIG, MODULES) or base in TOKENIZER_FILES:
            if base in parts:
                raise BadInput(f"{base} is given twice ({parts[base]} and {p})", p)
            parts[base] = p
        else:
            ignored.append(base)
    return weights, parts, ignored


def read_config(path):
    return load_json(read_small(path, MAX_CONFIG_BYTES, "the config"), path, "the config")


def open_folder(paths):
    """A Model whose description says what runtimes need; refused whole when the config,
    the tokenizer or the tensors contradict each other."""
    from . import archs, tokenizer
    from .archs.transforms import converter_order
    from .formats import safetensors

    files, subfolder, name = _expand(paths)
    weights, parts, ignored = classify(files)
    where = name or "the folder"
    if CONFIG not in parts:
        raise BadInput(f"{where} has no config.json (a model folder needs one; or give the "
                       "weights file alone)", paths[0])
    if not any(w.lower().endswith(".safetensors") for w in weights):
        bins = [b for b in ignored if b.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5"))]
        also = f" (only {', '.join(bins[:3])}: q4apr reads safetensors)" if bins else ""
        raise BadInput(f"{where} has no .safetensors weights{also}", parts[CONFIG])
    config_path = parts[CONFIG]
    config = read_config(config_path)
    family = archs.family_for(config, config_path)
    hparams = family.hparams(config, config_path)
    model = safetensors.read(weights, ["index" if w.lower().endswith(".json") else "safetensors"
                                       for w in weights])
    # the converter's tensor order: shard files sorted, names sorted within each
    parts_names = {}
    for e in model.tensors:
        parts_names.setdefault(os.path.basename(e.path), []).append(e.name)
    order = {n: i for i, n in enumerate(converter_order(parts_names))}
    model.tensors.sort(key=lambda e: order[e.name])
    family.check_tensors(hparams, {e.name: e.shape for e in model.tensors}, config_path)
    used_sub = _pooling(parts, subfolder, hparams)
    tok_files = {k: v for k, v in parts.items() if k not in (CONFIG, MODULES)}
    tok = tokenizer.read(tok_files, config, family.VOCAB, hparams["vocab_size"])
    hparams["tokenizer_rows"] = tok.json_rows
    model.name = name or model.name
    model.paths = list(weights) + [parts[k] for k in sorted(parts)] + list(used_sub.values())
    model.description = Description(model.name, config, family, hparams, tok,
                                    {**parts, **used_sub},
                                    sorted(ignored) + sorted(set(subfolder) - set(used_sub)))
    return model


def _pooling(parts, subfolder, hparams):
    """hparams["pooling_type"] from modules.json and its Pooling module's config (the
    files used, {relative name: path})."""
    from .archs import bert

    if MODULES not in parts:
        return {}
    path = parts[MODULES]
    modules = load_json(b'{"m":' + read_small(path, MAX_CONFIG_BYTES, "modules.json") + b"}",
                        path, "modules.json")["m"]
    if not isinstance(modules, list):
        raise BadInput("modules.json is not a list of modules", path)
    used, pooling_config = {}, None
    for m in modules:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
            rel = f"{str(m.get('path', '')).strip('/')}/config.json".lstrip("/")
            if rel in subfolder:
                used[rel] = subfolder[rel]
                pooling_config = read_config(subfolder[rel])
    try:
        hparams["pooling_type"] = bert.pooling_type(modules, pooling_config)
    except ValueError as e:
        raise BadInput(f"modules.json: {e}", path) from None
    return used
