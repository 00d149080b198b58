// gguf_check FILE.gguf: open a GGUF with ggml's own loader and print what ggml sees.
//
// A test oracle for q4apr (tests/test_llama_cpp.py), built by tests/llama_cpp/build.sh
// against the ggml of a pinned llama.cpp. gguf_init_from_file runs with no_alloc=false,
// so ggml reads the whole file: header, key/values, tensor infos and every tensor's data
// (its checks on types, shapes, offsets, alignment and sizes all apply). Then each
// tensor's data goes through ggml_validate_row_data (what llama.cpp's loader runs with
// check_tensors: NaN/inf scales and values).
//
// Output, one record a line, fields separated by tabs:
//   version  <n>
//   alignment  <n>
//   data_offset  <n>          (file offset of the data section)
//   n_kv  <n>
//   kv  <key>  <gguf type name>
//   n_tensors  <n>
//   tensor  <name>  <ggml type name>  <n_dims>  <ne0,ne1,ne2,ne3>  <offset in data>  <nbytes>  <fnv1a64 of data, hex>
//   ok
// Exit: 0 accepted; 1 ggml rejected the file or some tensor data is invalid (reason on
// stderr, with ggml's own messages); 2 usage.

#include "ggml.h"
#include "gguf.h"

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>

static uint64_t fnv1a64(const void * data, size_t n) {
    const unsigned char * p = static_cast<const unsigned char *>(data);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE.gguf\n", argv[0]);
        return 2;
    }
    struct ggml_context * data_ctx = nullptr;
    struct gguf_init_params params = { /*no_alloc =*/ false, /*ctx =*/ &data_ctx };
    struct gguf_context * ctx = gguf_init_from_file(argv[1], params);
    if (ctx == nullptr) {
        fprintf(stderr, "gguf_check: ggml rejected %s (gguf_init_from_file failed)\n", argv[1]);
        return 1;
    }

    printf("version\t%u\n", gguf_get_version(ctx));
    printf("alignment\t%zu\n", gguf_get_alignment(ctx));
    printf("data_offset\t%zu\n", gguf_get_data_offset(ctx));

    const int64_t n_kv = gguf_get_n_kv(ctx);
    printf("n_kv\t%" PRId64 "\n", n_kv);
    for (int64_t i = 0; i < n_kv; i++) {
        printf("kv\t%s\t%s\n", gguf_get_key(ctx, i), gguf_type_name(gguf_get_kv_type(ctx, i)));
    }

    int bad = 0;
    const int64_t n_tensors = gguf_get_n_tensors(ctx);
    printf("n_tensors\t%" PRId64 "\n", n_tensors);
    for (int64_t i = 0; i < n_tensors; i++) {
        const char * name = gguf_get_tensor_name(ctx, i);
        struct ggml_tensor * t = ggml_get_tensor(data_ctx, name);
        if (t == nullptr || t->data == nullptr) {
            fprintf(stderr, "gguf_check: tensor %s has no data in ggml's context\n", name);
            bad = 1;
            continue;
        }
        const size_t nbytes = ggml_nbytes(t);
        if (nbytes != gguf_get_tensor_size(ctx, i) || t->type != gguf_get_tensor_type(ctx, i)) {
            fprintf(stderr, "gguf_check: tensor %s: ggml tensor and gguf info disagree\n", name);
            bad = 1;
        }
        if (!ggml_validate_row_data(t->type, t->data, nbytes)) {
            fprintf(stderr, "gguf_check: tensor %s: ggml_validate_row_data rejected its data\n", name);
            bad = 1;
        }
        printf("tensor\t%s\t%s\t%d\t%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 "\t%zu\t%zu\t%016" PRIx64 "\n",
               name, ggml_type_name(t->type), ggml_n_dims(t),
               t->ne[0], t->ne[1], t->ne[2], t->ne[3],
               gguf_get_tensor_offset(ctx, i), nbytes, fnv1a64(t->data, nbytes));
    }

    gguf_free(ctx);
    ggml_free(data_ctx);
    if (bad) {
        return 1;
    }
    printf("ok\n");
    return 0;
}
