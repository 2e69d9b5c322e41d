"""Only the C extension: everything else about the package is in pyproject.toml.

app._fastjson reads the common shape of prediction contexts straight from JSON text into arrays
(app/_fastjson.c, used by app/fastparse.py). It is optional at build time: without a C compiler the
package installs without it and the service reads every body with msgspec, more slowly; the test suite
requires it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("app._fastjson", ["app/_fastjson.c"], optional=True, extra_compile_args=["-O2", "-Wall"])
    ]
)
