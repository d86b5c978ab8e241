/*
 * fa_cuda_check.h -- internal: can fairattack's CUDA kernels run on a given GPU?
 *
 * The kernels are compiled for the architectures torch was built for (setup.py). A GPU of
 * another compute capability has no kernel image: every launch would fail mid-attack with
 * cudaErrorNoKernelImageForDevice. The module checks once per device before an attack instead.
 * Built only with CUDA (csrc/cuda/check.cu); not part of the public contract.
 */
#ifndef FA_CUDA_CHECK_H
#define FA_CUDA_CHECK_H

#include "fairattack.h"

#ifdef __cplusplus
extern "C" {
#endif

/* FA_OK when the kernels have an image for GPU device_index (native code, or PTX the driver
 * can compile). Otherwise FA_ERR_CUDA with a message naming the GPU, its compute capability,
 * the architectures built and how to rebuild; FA_ERR_ARGUMENT for an index out of range;
 * FA_ERR_NO_CUDA without a usable device. The calling thread's current device is unchanged. */
fa_status fa_cuda_check_device(int device_index);

/* The architectures the kernels were built for, e.g. "sm_75/sm_80/sm_90/compute_90". */
const char *fa_cuda_archs(void);

#ifdef __cplusplus
}
#endif

#endif /* FA_CUDA_CHECK_H */
