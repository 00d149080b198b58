// quants_ref q TYPE N  <f32 in  >blocks out : ggml_quantize_chunk(TYPE, one row of N, no imatrix)
// quants_ref d TYPE N  <blocks in >f32 out  : ggml's to_float for TYPE (dequantize_row_*)
//
// A test oracle for q4apr's block codecs (tests/test_kquants.py): the C reference
// quantizers of a pinned ggml, exactly as llama-quantize reaches them without an
// importance matrix (quantize_q4_K -> quantize_row_q4_K_ref, ...). TYPE is the GGML type
// code (2 Q4_0, 6 Q5_0, 8 Q8_0, 12 Q4_K, 14 Q6_K, ...). Built by
// tests/llama_cpp/build_quants_ref.sh against the llama.cpp build's libggml-base.a.
// Exit 0 ok, 1 short input or bad type, 2 usage.
#include "ggml.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_all(void * buf, size_t n) {
    return fread(buf, 1, n, stdin) == n;
}

int main(int argc, char ** argv) {
    if (argc != 4 || (strcmp(argv[1], "q") && strcmp(argv[1], "d"))) {
        fprintf(stderr, "usage: quants_ref q|d TYPE N\n");
        return 2;
    }
    const int type = atoi(argv[2]);
    const int64_t n = atoll(argv[3]);
    if (type < 0 || type >= GGML_TYPE_COUNT || n <= 0 || n % ggml_blck_size((enum ggml_type) type)) {
        fprintf(stderr, "quants_ref: bad type %d or length %lld\n", type, (long long) n);
        return 1;
    }
    const size_t nb = ggml_row_size((enum ggml_type) type, n);
    float * f = malloc(n * sizeof(float));
    void * q = malloc(nb);
    if (argv[1][0] == 'q') {
        if (!read_all(f, n * sizeof(float))) { fprintf(stderr, "quants_ref: short input\n"); return 1; }
        size_t got = ggml_quantize_chunk((enum ggml_type) type, f, q, 0, 1, n, NULL);
        if (got != nb) { fprintf(stderr, "quants_ref: %zu bytes, expected %zu\n", got, nb); return 1; }
        fwrite(q, 1, nb, stdout);
    } else {
        const struct ggml_type_traits * tt = ggml_get_type_traits((enum ggml_type) type);
        if (!tt->to_float) { fprintf(stderr, "quants_ref: no to_float for type %d\n", type); return 1; }
        if (!read_all(q, nb)) { fprintf(stderr, "quants_ref: short input\n"); return 1; }
        tt->to_float(q, f, n);
        fwrite(f, sizeof(float), n, stdout);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
