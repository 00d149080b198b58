"""Architecture families: what llama.cpp's converter does per architecture, as tables.

    fam = archs.family_for(config, path)   # by config.json's model_type
    hp = fam.hparams(config, path); fam.check_tensors(hp, shapes, path)
    fam.gguf_kv(hp, config); fam.gguf_tensors(hp, shapes, config)
    fam.apr_metadata(hp, config); fam.apr_tensors(hp, shapes)

Adding an architecture is a module with a @register'ed Family, imported below.
"""

from . import bert, gemma, llama, phi3, qwen  # noqa: F401  (each registers its families)
from .base import FAMILIES, config_path
from ..errors import BadInput


def family_for(config, path):
    """The family of config.json's model_type; BadInput naming the field when unknown."""
    if not isinstance(config, dict):
        raise BadInput("must be a JSON object", config_path(path))
    mt = config.get("model_type")
    if not isinstance(mt, str):
        raise BadInput(f"field 'model_type': missing or not a string ({mt!r})",
                       config_path(path))
    fam = FAMILIES.get(mt)
    if fam is None:
        raise BadInput(f"field 'model_type': {mt!r} is not supported (supported: "
                       f"{', '.join(sorted(FAMILIES))})", config_path(path))
    return fam
