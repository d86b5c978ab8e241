"""Builds fairattack._core: the C core (C11 flags), the LibTorch shim (C++17 flags of the installed
torch), the CPython module and, when nvcc and a CUDA build of torch are present, the CUDA kernels.

Build against the installed torch, without build isolation:
    pip install --no-build-isolation .
FAIRATTACK_CUDA=0 forces a CPU-only build, =1 requires CUDA, unset = auto.
Warnings are errors (-Werror) only in CI (CI=true) or with FAIRATTACK_WERROR=1.
The kernels are built for every GPU architecture torch was built for (TORCH_CUDA_ARCH_LIST, e.g.
"8.0 9.0+PTX", overrides it), plus PTX of the newest for later GPUs, and use torch's shared CUDA
runtime (one runtime in the process).
"""

import glob
import os
import re
import shutil
import subprocess
import sys

import numpy
import torch
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from torch.utils import cpp_extension



def werror():
    """Warnings are errors in CI (CI set, as CI services set it, e.g. CI=true) or with
    FAIRATTACK_WERROR=1, never in users' builds: a newer compiler's new warning must not stop
    an install. FAIRATTACK_WERROR=0 turns them off in CI too."""
    off = ("", "0", "no", "off", "false")
    choice = os.environ.get("FAIRATTACK_WERROR")
    if choice is not None:
        return choice.strip().lower() not in off
    return os.environ.get("CI", "").strip().lower() not in off


WERROR = ["-Werror"] if werror() else []
C_FLAGS = ["-std=c11", "-O3", "-ffp-contract=off", "-Wall", "-Wextra", "-Wshadow",
           "-Wstrict-prototypes", *WERROR]
CXX_FLAGS = ["-std=c++20", "-O3", "-Wall", "-Wextra", *WERROR,
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
NVCC_FLAGS = ["-std=c++17", "-O3", "--compiler-options", ",".join(["-fPIC", "-Wall", "-Wextra",
                                                                    *WERROR])]
# every header of ours: a change to one rebuilds the extension (build_ext only looks at sources
# and these); a change of the CUDA arch list needs `build_ext --force` (benchmarks/gpu_check.sh)
HEADERS = sorted(glob.glob("csrc/**/*.h", recursive=True))
FALLBACK_ARCHS = ["7.0", "7.5", "8.0", "8.6", "9.0"]  # torch without an arch list: sm_70..sm_90


def _arch_numbers(text):
    """"8.0 8.6+PTX;9.0" or "sm_80 sm_86 compute_90" -> ([80, 86, 90], PTX wanted)."""
    archs, ptx = [], False
    for item in re.split(r"[\s;,]+", text.strip()):
        match = re.fullmatch(r"(?:sm_|compute_)?(\d+)\.?(\d)?([a-z]?)(\+PTX)?", item)
        if not match:
            continue
        major, minor = match.group(1), match.group(2)
        number = int(major + minor) if minor is not None else int(major)
        ptx |= bool(match.group(4)) or item.startswith("compute_")
        if number not in archs:  # sm_90a-style variants: the plain sm_90 runs everywhere
            archs.append(number)
    return sorted(archs), ptx


def cuda_arch_flags(nvcc):
    """-gencode flags for the architectures torch supports: TORCH_CUDA_ARCH_LIST, else torch's
    own build list (torch.cuda.get_arch_list() is empty without a GPU, _cuda_getArchFlags is
    not), else sm_70..sm_90; those nvcc cannot build are dropped; PTX of the newest is added."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST") or ""
    if not listed:
        get_flags = getattr(torch._C, "_cuda_getArchFlags", None)
        listed = (get_flags() if get_flags else None) or " ".join(FALLBACK_ARCHS)
    archs, _ = _arch_numbers(listed)
    try:
        supported = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True,
                                   check=True).stdout
        can_build = set(_arch_numbers(supported)[0])
    except (OSError, subprocess.CalledProcessError):
        can_build = set(archs)
    dropped = [a for a in archs if a not in can_build]
    archs = [a for a in archs if a in can_build]
    if dropped:
        print(f"fairattack: nvcc cannot build sm_{', sm_'.join(map(str, dropped))}; skipped")
    if not archs:
        sys.exit(f"fairattack: no CUDA architecture to build (wanted {listed!r}, nvcc supports "
                 f"{sorted(can_build)}); set TORCH_CUDA_ARCH_LIST")
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    names = [f"sm_{a}" for a in archs] + [f"compute_{archs[-1]}"]
    return flags + [f"-DFA_CUDA_ARCHS={'/'.join(names)}"]


def torch_cudart():
    """(folder, file) of the shared CUDA runtime torch loads (pip's nvidia/*/lib or torch/lib),
    or None: the extension links that very library, so the process has one CUDA runtime."""
    torch_dir = os.path.dirname(torch.__file__)
    major = (torch.version.cuda or "").split(".")[0]
    patterns = [os.path.join(torch_dir, "lib", "libcudart*.so*"),
                os.path.join(os.path.dirname(torch_dir), "nvidia", "*", "lib", "libcudart.so*")]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if re.search(rf"libcudart(-[0-9a-f]+)?\.so\.{major}(\.|$)", os.path.basename(path)):
                return os.path.dirname(path), os.path.basename(path)
    return None


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
link_args = ["-Wl,-rpath,$ORIGIN/../torch/lib"]
runtime_dirs = list(TORCH_LIB)
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")]
if NVCC:
    core = [s for s in core if not s.endswith("no_cuda.c")]
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    sources = [s for s in sources if not os.path.basename(s).startswith("test_")]
    NVCC_FLAGS += cuda_arch_flags(NVCC)
    macros.append(("FA_WITH_CUDA", "1"))
    cudart = torch_cudart()
    if cudart:  # torch's own libcudart.so.N: found again at run time next to torch
        folder, name = cudart
        site = os.path.dirname(os.path.dirname(torch.__file__))
        library_dirs.append(folder)
        runtime_dirs.append(folder)
        link_args += [f"-l:{name}", f"-Wl,-rpath,$ORIGIN/../{os.path.relpath(folder, site)}"]
    else:  # a torch linked to the system CUDA: the toolkit's shared runtime
        library_dirs.append(os.path.join(os.path.dirname(os.path.dirname(NVCC)), "lib64"))
        libraries.append("cudart")

ext = Extension(
    "fairattack._core",
    sources=core + sources,
    include_dirs=["csrc/include", "csrc/core", "csrc/torch", numpy.get_include(), *TORCH_INC],
    define_macros=macros,
    library_dirs=library_dirs,
    libraries=libraries,
    runtime_library_dirs=runtime_dirs,
    extra_link_args=link_args,
    depends=HEADERS,
    language="c++",
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
