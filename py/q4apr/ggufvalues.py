"""GGUF metadata value types (gguf-py's GGUFValueType), defined once for every module that
writes or reads GGUF key/values."""

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, \
    FLOAT64 = range(13)
