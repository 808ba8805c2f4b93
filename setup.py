"""Only what pyproject.toml cannot say: the cffi extension and its abi3 tag."""

from setuptools import setup

setup(
    cffi_modules=["src/rolewire/_build_native.py:ffibuilder"],
    # One wheel per platform for every CPython >= 3.10 (cffi builds with
    # Py_LIMITED_API; this makes the wheel tag say so).
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
