"""Build the optional native AEAD loop (src/meshscale/wireguard/_aead.c) and TSO rows
(src/meshscale/packet/_segment.c) and the DERP relay's in-place frame rewrite
(src/meshscale/derp/_runs.c); metadata is in
pyproject.toml. optional=True: without a compiler or libssl-dev the install still succeeds and
meshscale.wireguard.transport uses its pure-Python fallback."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meshscale.wireguard._aead",
            ["src/meshscale/wireguard/_aead.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "meshscale.packet._segment",
            ["src/meshscale/packet/_segment.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "meshscale.derp._runs",
            ["src/meshscale/derp/_runs.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
