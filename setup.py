"""Thin setup: metadata lives in pyproject.toml; native code is built by CMakeLists.txt.

FASTGEN_NO_EXT=1 installs pure Python; FASTGEN_WITH_CUDA=ON adds the CUDA kernels.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _tool(module: str, attr: str, name: str) -> str:
    """The PyPI cmake/ninja when installed (the system ones may be too old), else PATH's."""
    try:
        return str(Path(getattr(__import__(module), attr)) / name)
    except (ImportError, AttributeError):
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"{name} not found: pip install {module}") from None
        return found


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = ROOT / "build" / f"py{sys.version_info.major}{sys.version_info.minor}"
        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'BIN_DIR', 'ninja')}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('FASTGEN_BUILD_TYPE', 'Release')}",
            f"-DFASTGEN_WITH_CUDA={os.environ.get('FASTGEN_WITH_CUDA', 'OFF')}",
        ]
        subprocess.run(configure, check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_C"], check=True)


ext_modules = [] if os.environ.get("FASTGEN_NO_EXT") == "1" else [Extension("fastgen._C", sources=[])]
setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
