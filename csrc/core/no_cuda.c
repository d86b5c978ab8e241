/* no_cuda.c -- linked instead of csrc/cuda/ when the core is built without CUDA. */
#include "fa_backend.h"

const fa_backend *fa_backend_cuda(void) { return NULL; }

int fa_cuda_available(void) { return 0; }

fa_status fa_cuda_set_context(int device_index, void *cuda_stream) {
    (void)cuda_stream;
    if (device_index < -1)
        return fa_set_error(FA_ERR_ARGUMENT, "device_index=%d must be >= -1", device_index);
    return FA_OK; /* nothing runs on a GPU: fa_attack refuses FA_DEVICE_CUDA itself */
}

fa_status fa_cuda_set_allocator(fa_cuda_alloc_fn alloc, fa_cuda_free_fn release) {
    (void)alloc, (void)release;
    return FA_OK;
}
