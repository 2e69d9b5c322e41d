"""Only the C extension: everything else about the package is in pyproject.toml.

app.wire._json_reader reads the common shape of prediction contexts straight from JSON text into arrays
(app/wire/_json_reader.c, used by app/wire/decode.py). It is optional at build time: without a C compiler the
package installs without it and the service reads every body with msgspec, more slowly; the test suite
requires it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "app.wire._json_reader",
            ["app/wire/_json_reader.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
        )
    ]
)
