/*
 * check.cu -- fa_cuda_check_device (fa_cuda_check.h): asks the CUDA runtime whether a probe
 * kernel, compiled with exactly the flags of the backend's kernels, has an image for a GPU.
 */
#include <cuda_runtime.h>

#include "fa_cuda_check.h"

#define FA_STRINGIFY2(x) #x
#define FA_STRINGIFY(x) FA_STRINGIFY2(x)
#ifdef FA_CUDA_ARCHS
#define FA_CUDA_ARCHS_TEXT FA_STRINGIFY(FA_CUDA_ARCHS)
#else
#define FA_CUDA_ARCHS_TEXT "(not recorded)"
#endif

namespace {

__global__ void fa_k_probe(int *out) {
    if (out != nullptr)
        *out = 1;
}

} // namespace

extern "C" const char *fa_cuda_archs(void) { return FA_CUDA_ARCHS_TEXT; }

extern "C" fa_status fa_cuda_check_device(int device_index) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        (void)cudaGetLastError(); /* leave no sticky error behind */
        return fa_set_error(FA_ERR_NO_CUDA, "no usable CUDA device: %s",
                            err != cudaSuccess ? cudaGetErrorString(err) : "device count is 0");
    }
    if (device_index < 0 || device_index >= count)
        return fa_set_error(FA_ERR_ARGUMENT, "device_index=%d out of range [0, %d)", device_index,
                            count);
    int previous = 0;
    if ((err = cudaGetDevice(&previous)) != cudaSuccess)
        return fa_set_error(FA_ERR_CUDA, "cudaGetDevice failed: %s", cudaGetErrorString(err));
    if ((err = cudaSetDevice(device_index)) != cudaSuccess)
        return fa_set_error(FA_ERR_CUDA, "cudaSetDevice(%d) failed: %s", device_index,
                            cudaGetErrorString(err));
    cudaFuncAttributes attributes;
    const cudaError_t probe = cudaFuncGetAttributes(&attributes, fa_k_probe);
    (void)cudaGetLastError();
    cudaDeviceProp properties;
    const cudaError_t props = cudaGetDeviceProperties(&properties, device_index);
    (void)cudaSetDevice(previous);
    if (probe == cudaSuccess)
        return FA_OK;
    const char *name = props == cudaSuccess ? properties.name : "unknown GPU";
    const int major = props == cudaSuccess ? properties.major : 0;
    const int minor = props == cudaSuccess ? properties.minor : 0;
    if (probe == cudaErrorNoKernelImageForDevice || probe == cudaErrorInvalidDeviceFunction)
        return fa_set_error(FA_ERR_CUDA,
                            "GPU %d (%s, compute capability %d.%d) has no kernel image of "
                            "fairattack's CUDA kernels, built for %s: rebuild on this machine "
                            "(TORCH_CUDA_ARCH_LIST=\"%d.%d\" pip install --no-build-isolation .) "
                            "or build without CUDA kernels (FAIRATTACK_CUDA=0: the model still "
                            "runs on the GPU, the attack's state on the host)",
                            device_index, name, major, minor, fa_cuda_archs(), major, minor);
    return fa_set_error(FA_ERR_CUDA, "GPU %d (%s): cannot query fairattack's CUDA kernels: %s",
                        device_index, name, cudaGetErrorString(probe));
}
