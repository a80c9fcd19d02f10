"""Builds the optional compiled extensions, each with a pure-Python twin that gives the same results:
the span encoder (src/llmship/sinks/_spanenc.pyx; twin llmship.sinks.spanenc), the log path's scrub-and-cut
step (src/llmship/transforms/_logpath.pyx; twin llmship.transforms.logpath), and the hot path's Python
modules compiled as they are (``COMPILED_MODULES``: the same source is their twin; see
llmship/__init__.py for how the twin is chosen). Everything else is in pyproject.toml.

Like aiohttp's setup.py: an extension is built when a compiler works, and when it does not (no compiler,
a failing one, an unsupported platform) the install goes on without it and llmship runs its twin, with a
warning. ``LLMSHIP_NO_EXTENSIONS=1`` at build time skips the build; at run time it makes installed
extensions unused.
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# setuptools' names for the distutils errors: the classes its build machinery raises (a separate
# `from setuptools._distutils.errors import` can name other class objects than `distutils.errors`).
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

NO_EXTENSIONS = os.environ.get("LLMSHIP_NO_EXTENSIONS", "") not in ("", "0") or \
    sys.implementation.name != "cpython"

BUILD_ERRORS = (CCompilerError, CompileError, ExecError, PlatformError, ValueError, OSError)


def _warn(message: str) -> None:
    print(f"WARNING: {message}; llmship will use its pure-Python twin", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext whose failure is a warning, not an install failure."""

    def finalize_options(self):
        # Cythonize here, not at import: Cython is a build requirement, and a failure is one more
        # reason to go without the extension. Each on its own: one that fails leaves the others built.
        built = []
        try:
            from Cython.Build import cythonize
        except Exception as e:
            _warn(f"Cython is missing ({e})")
            cythonize = None
        for ext in self.distribution.ext_modules if cythonize else ():
            try:
                built += cythonize([ext], language_level=3, quiet=True, compiler_directives=(
                    _AS_PYTHON if ext.sources[0].endswith(".py") else {}))
            except Exception as e:  # the .pyx not compiling to C
                _warn(f"cythonizing {ext.name} failed ({e})")
        for ext in built:
            # not copied into the source tree (editable installs) when it failed to build; set here
            # because cythonize makes new Extension objects without it
            ext.optional = True
        self.distribution.ext_modules[:] = built
        super().finalize_options()
        if self.parallel is None:  # one compiler a core: the modules are independent
            self.parallel = os.cpu_count() or 1

    def run(self):
        self._remove_unlisted_builds()
        try:
            super().run()
        except BUILD_ERRORS as e:
            _warn(f"building the compiled extensions failed ({e})")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as e:
            _warn(f"building {ext.name} failed ({e})")
            # An earlier build of it would ship and load beside a source it was not built from
            Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)

    def _remove_unlisted_builds(self):
        """Compiled modules of an earlier build that this one does not build (no longer listed, or
        LLMSHIP_NO_EXTENSIONS set): beside their .py they would ship in the wheel and load instead of it, as
        they were (llmship/__init__.py prefers a build as old as its source). Only builds with a .py twin in
        src/ (the .pyx extensions have none)."""
        building = {ext.name for ext in self.distribution.ext_modules}
        for root in {self.build_lib, "src"}:
            for path in Path(root, "llmship").rglob("*"):
                stem, _, suffix = path.name.partition(".")
                parts = path.relative_to(root).parent.parts + (stem,)
                if (suffix.endswith(("so", "pyd")) and Path("src", *parts).with_suffix(".py").exists()
                        and ".".join(parts) not in building):
                    path.unlink()


# The Python glue every span and LLM call goes through (dict lookups, small objects, calls), compiled from
# its .py as it is: CPython 3.11 interprets it a bytecode at a time, and compiled it takes 6-7% fewer
# instructions a span or a call with the same results (bench/llm_calls.py --callgrind: 415,566 -> 388,484
# instructions a call; bench/spans_instructions.py: 57,692 -> 53,590 a span). The source stays the twin:
# llmship/__init__.py loads it instead with LLMSHIP_NO_EXTENSIONS=1, or when it was written after its build
# (an edit not yet rebuilt is never shadowed). Only these: a compiled module's code is resident (about its
# file's size: 2.3 MiB for those an agent loads on the default config), and the memory goal is 100 MiB
# with 100,000 contexts; the rest of the modules gained 2% more for 2.8 MiB more. llmship.workers and the
# OTLP modules are loaded only with workers or OTLP configured.
COMPILED_MODULES = (
    "aggregation", "processing", "sketch", "tags", "telemetry", "workers",
    "llm/extract", "llm/otlp", "llm/policies", "llm/stage",
    "shipping/router",
    "sinks/llmobs", "sinks/traces",
    "sources/otlp", "sources/otlp_map",
    "transforms/privacy", "transforms/sampling",
)
# Compiled as Python runs them: annotations are documentation, not type checks (an EncodedChunk goes where
# list[Span] is annotated), and functions stay introspectable.
_AS_PYTHON = {"annotation_typing": False, "binding": True}

extensions = [] if NO_EXTENSIONS else [
    Extension("llmship.sinks._spanenc", ["src/llmship/sinks/_spanenc.pyx"], optional=True),
    Extension("llmship.transforms._logpath", ["src/llmship/transforms/_logpath.pyx"], optional=True),
] + [Extension("llmship." + name.replace("/", "."), [f"src/llmship/{name}.py"], optional=True)
     for name in COMPILED_MODULES]
if NO_EXTENSIONS:
    print("LLMSHIP_NO_EXTENSIONS is set: not building the compiled extensions", file=sys.stderr)

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
