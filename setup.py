"""Builds the Cython fast path: one extension per .pyx in fastpath/, optimised."""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
extensions = [
    Extension(
        f"fastpath.{pyx.stem}",
        [f"fastpath/{pyx.name}"],
        extra_compile_args=["-O3", "-march=x86-64-v2"],
    )
    for pyx in sorted((HERE / "fastpath").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        annotate=False,
    ),
)
