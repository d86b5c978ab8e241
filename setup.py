"""Builds fairattack._core: the C core (C11 flags), the LibTorch shim (C++17 flags of the installed
torch), the CPython module and, when nvcc and a CUDA build of torch are present, the CUDA kernels.

Build against the installed torch, without build isolation:
    pip install --no-build-isolation .
FAIRATTACK_CUDA=0 forces a CPU-only build, =1 requires CUDA, unset = auto.
"""

import glob
import os
import shutil
import subprocess
import sys

import numpy
import torch
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from torch.utils import cpp_extension

C_FLAGS = ["-std=c11", "-O3", "-ffp-contract=off", "-Wall", "-Wextra", "-Wshadow", "-Wstrict-prototypes", "-Werror"]
CXX_FLAGS = ["-std=c++20", "-O3", "-Wall", "-Wextra", "-Werror",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
NVCC_FLAGS = ["-std=c++17", "-O3", "--compiler-options", "-fPIC,-Wall,-Wextra,-Werror",
              "-gencode", "arch=compute_80,code=sm_80",
              "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]


def want_cuda():
    choice = os.environ.get("FAIRATTACK_CUDA", "auto").lower()
    nvcc = shutil.which("nvcc") or (cpp_extension.CUDA_HOME and
                                     os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    have = bool(nvcc and os.path.exists(nvcc) and torch.version.cuda
                and glob.glob("csrc/cuda/*.cu"))
    if choice in ("0", "no", "off", "false"):
        return None
    if choice in ("1", "yes", "on", "true") and not have:
        sys.exit("FAIRATTACK_CUDA=1 but nvcc or a CUDA build of torch is missing")
    return nvcc if have else None


def _system(opt):
    """-I<torch include> -> -isystem<...>: warnings in torch's headers are not ours."""
    return "-isystem" + opt[2:] if opt.startswith("-I") and opt[2:] in TORCH_INC else opt


class BuildExt(build_ext):
    """Per-language flags: C flags never reach C++ files and vice versa; .cu goes to nvcc."""

    def build_extensions(self):
        self.compiler.src_extensions += [".cu"]
        default_compile = self.compiler._compile

        def compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if src.endswith(".cu"):
                cmd = [NVCC, "-c", src, "-o", obj, *pp_opts, *NVCC_FLAGS]
                self.spawn(cmd)
                return
            flags = CXX_FLAGS if src.endswith(".cpp") else C_FLAGS
            if src.endswith(".cpp"):
                # torch headers are not ours: keep -Werror from biting on them
                cc_args = [_system(o) for o in cc_args]
                pp_opts = [_system(o) for o in pp_opts]
            default_compile(obj, src, ext, cc_args, flags, pp_opts)

        self.compiler._compile = compile_one
        super().build_extensions()


NVCC = want_cuda()
TORCH_INC = cpp_extension.include_paths()
TORCH_LIB = cpp_extension.library_paths()
core = sorted(glob.glob("csrc/core/*.c"))
sources = ["csrc/python/module.c", "csrc/torch/fa_torch.cpp"]
libraries = ["c10", "torch", "torch_cpu"]
library_dirs = list(TORCH_LIB)
if NVCC:
    core = [s for s in core if not s.endswith("no_cuda.c")]
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    sources = [s for s in sources if not os.path.basename(s).startswith("test_")]
    cuda_lib = os.path.join(os.path.dirname(os.path.dirname(NVCC)), "lib64")
    libraries += ["cudart_static", "rt", "dl", "pthread"]
    library_dirs.append(cuda_lib)

ext = Extension(
    "fairattack._core",
    sources=core + sources,
    include_dirs=["csrc/include", "csrc/core", "csrc/torch", numpy.get_include(), *TORCH_INC],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")],
    library_dirs=library_dirs,
    libraries=libraries,
    runtime_library_dirs=list(TORCH_LIB),
    extra_link_args=["-Wl,-rpath,$ORIGIN/../torch/lib"],
    language="c++",
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
