"""Build gluon_hmm: one C++ engine (src/hmm), two front ends.

* ``gluon_hmm._native``: Cython binding of the engine for NumPy arrays.
* ``gluon_hmm/libgluon_hmm_mxnet.so``: the MXNet 1.9.x external operator
  library (src/mxnet + the engine + ``lib_api.cc`` shipped inside the
  installed mxnet wheel), loaded with ``mx.library.load`` on ``import gluon_hmm``.

Set ``GLUON_HMM_CUDA=1`` to compile the CUDA driver too (nvcc from CUDA_HOME,
static cudart, sm_75 and newer plus PTX).  CPU-only builds are the default.
"""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE_SOURCES = ["src/hmm/capi.cc", "src/hmm/cpu.cc"]
ENGINE_HEADERS = sorted(glob.glob(os.path.join(HERE, "src", "hmm", "*.h")))
CXXFLAGS = ["-O3", "-std=gnu++17", "-fPIC", "-Wall", "-Wno-psabi", "-ffp-contract=fast",
            "-fno-math-errno", "-pthread"]
CUDA_ARCHS = ["75", "80", "86", "89", "90"]


def want_cuda():
    return os.environ.get("GLUON_HMM_CUDA", "0").lower() in ("1", "true", "yes", "on")


def mxnet_dir():
    """The installed mxnet package folder, found without importing mxnet."""
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "gluon_hmm needs mxnet==1.9.1 installed before it is built (its op library "
            "compiles against the lib_api.h/lib_api.cc shipped in the mxnet wheel): "
            "pip install mxnet==1.9.1 'numpy<1.24'")
    root = spec.submodule_search_locations[0]
    for rel in ("include/mxnet/lib_api.h", "src/lib_api.cc"):
        if not os.path.exists(os.path.join(root, rel)):
            raise RuntimeError("the mxnet wheel at %s lacks %s; gluon_hmm needs mxnet 1.9.x"
                               % (root, rel))
    return root


def nvcc_path():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", "nvcc")
    if os.path.exists(cand):
        return cand, home
    found = shutil.which("nvcc")
    if found:
        return found, os.path.dirname(os.path.dirname(found))
    raise RuntimeError("GLUON_HMM_CUDA=1 but nvcc was not found (set CUDA_HOME)")


class BuildWithOpLibrary(build_ext):
    """build_ext that also links the MXNet operator library."""

    def run(self):
        # setuptools builds into build_lib and copies extensions into the source
        # tree afterwards for --inplace; the op library goes along with them.
        super().run()
        if self.inplace:
            built = os.path.join(self.build_lib, "gluon_hmm", "libgluon_hmm_mxnet.so")
            # copy then rename: a process that has the old library loaded keeps its mapping
            dest = os.path.join(HERE, "gluon_hmm", "libgluon_hmm_mxnet.so")
            shutil.copy2(built, dest + ".tmp")
            os.replace(dest + ".tmp", dest)

    def compile_stale(self, sources, output_dir, depends, **kwargs):
        """compiler.compile for the sources whose object is missing or older than the
        source, a file of ``depends`` or setup.py (distutils itself recompiles everything,
        ~1.5 min for the engine); all of them with --force."""
        objects = self.compiler.object_filenames(sources, output_dir=output_dir)
        newest_dep = max(os.path.getmtime(f) for f in list(depends) + [__file__])
        stale = [src for src, obj in zip(sources, objects)
                 if self.force or not os.path.exists(obj)
                 or os.path.getmtime(obj) < max(newest_dep, os.path.getmtime(src))]
        if stale:
            self.compiler.compile(stale, output_dir=output_dir, **kwargs)
        return objects

    def build_extensions(self):
        # The engine is compiled once and linked into both front ends.
        macros = [("GLUON_HMM_WITH_CUDA", "1")] if want_cuda() else []
        self.engine_objects = self.compile_stale(
            ENGINE_SOURCES, os.path.join(self.build_temp, "engine-cuda" if want_cuda() else "engine"),
            ENGINE_HEADERS, macros=macros, include_dirs=["src/hmm"], extra_postargs=CXXFLAGS)
        if want_cuda():
            self.engine_objects.append(self.compile_cuda())
        for ext in self.extensions:
            ext.extra_objects = list(self.engine_objects)
            if want_cuda():
                ext.libraries = ["cudart_static", "rt", "dl"]
                ext.library_dirs = self.cuda_lib_dirs()
        super().build_extensions()
        self.build_op_library()

    def cuda_lib_dirs(self):
        home = nvcc_path()[1]
        return [os.path.join(home, "lib64"), os.path.join(home, "lib")]

    def compile_cuda(self):
        nvcc, _ = nvcc_path()
        obj = os.path.join(self.build_temp, "engine", "cuda.o")
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        gencode = []
        for a in CUDA_ARCHS:
            gencode += ["-gencode", "arch=compute_%s,code=sm_%s" % (a, a)]
        gencode += ["-gencode", "arch=compute_%s,code=compute_%s" % (CUDA_ARCHS[-1], CUDA_ARCHS[-1])]
        subprocess.check_call([nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                               "-DGLUON_HMM_WITH_CUDA=1", "-Isrc/hmm"] + gencode +
                              ["-c", "src/hmm/cuda.cu", "-o", obj])
        return obj

    def build_op_library(self):
        mx = mxnet_dir()
        cc = self.compiler
        tmp = os.path.join(self.build_temp, "oplib")
        os.makedirs(tmp, exist_ok=True)
        includes = [os.path.join(mx, "include"), "src/hmm", "src"]
        lib_api_h = os.path.join(mx, "include", "mxnet", "lib_api.h")
        objects = self.compile_stale(["src/mxnet/ops.cc"], tmp, ENGINE_HEADERS + [lib_api_h],
                                     include_dirs=includes, extra_postargs=CXXFLAGS)
        objects += list(self.engine_objects)
        # lib_api.cc as shipped, with its leaking _msgGet renamed out of the way
        # (src/mxnet/ops.cc exports the replacement).
        objects += self.compile_stale([os.path.join(mx, "src", "lib_api.cc")],
                                      os.path.join(tmp, "mxnet"), [lib_api_h],
                                      macros=[("_msgGet", "gluon_hmm_replaced_msgGet")],
                                      include_dirs=includes, extra_postargs=CXXFLAGS + ["-w"])
        libs, lib_dirs = [], []
        if want_cuda():
            libs = ["cudart_static", "rt", "dl"]
            lib_dirs = self.cuda_lib_dirs()
        out_dir = os.path.join(self.build_lib, "gluon_hmm")
        os.makedirs(out_dir, exist_ok=True)
        target = os.path.join(out_dir, "libgluon_hmm_mxnet.so")
        cc.link_shared_object(objects, target, libraries=libs, library_dirs=lib_dirs,
                              extra_postargs=["-pthread"], target_lang="c++")


native = Extension(
    "gluon_hmm._native",
    sources=["gluon_hmm/_native.pyx"],
    # relink when the engine (linked in as extra objects) changes
    depends=ENGINE_SOURCES + ENGINE_HEADERS + glob.glob("src/hmm/*.cu"),
    include_dirs=[numpy.get_include(), "src/hmm"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=CXXFLAGS,
    extra_link_args=["-pthread"],
    language="c++",
)

setup(
    name="gluon_hmm",
    version="0.1.0",
    description="Hidden Markov models as fast, exact, differentiable operators for MXNet/Gluon",
    packages=["gluon_hmm"],
    ext_modules=cythonize([native], compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildWithOpLibrary},
    package_data={"gluon_hmm": ["libgluon_hmm_mxnet.so"]},
    python_requires=">=3.8",
    install_requires=["mxnet==1.9.1", "numpy==1.23.5"],
    extras_require={
        "test": ["pytest==9.2.0", "hypothesis==6.170.15", "scipy==1.15.3"],
        "examples": [line.strip() for line in open(os.path.join(HERE, "examples", "requirements.txt"))
                     if line.strip() and not line.startswith("#")],
    },
    zip_safe=False,
)
