/* no_cuda.c -- linked instead of csrc/cuda/ when the core is built without CUDA. */
#include "fa_backend.h"

const fa_backend *fa_backend_cuda(void) { return NULL; }

int fa_cuda_available(void) { return 0; }
