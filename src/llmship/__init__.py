"""llmship: a local agent that ships LLM telemetry (metrics, spans, LLM Observability events, logs)."""

__version__ = "0.1.0"

import importlib.machinery as _machinery
import importlib.util as _util
import os as _os
import sys as _sys

# LLMSHIP_NO_EXTENSIONS=1 forces the pure-Python twin of every native fast path (msgspec decode, the
# compiled span encoder, the Hyperscan scrub prefilter, the hot path's compiled modules), as
# AIOHTTP_NO_EXTENSIONS does for aiohttp.
NO_EXTENSIONS = _os.environ.get("LLMSHIP_NO_EXTENSIONS", "") not in ("", "0")


# A source this much newer than its build was edited after it: installing a wheel writes both within
# moments, in no set order.
_INSTALL_SKEW_NS = 2_000_000_000


class _SourceTwin:
    """Chooses between a module's source and its compiled build (setup.py COMPILED_MODULES: the same .py,
    compiled): Python's own finder prefers the build, this one loads the source instead with
    LLMSHIP_NO_EXTENSIONS=1, or when the source was written after the build (an edited module not yet
    rebuilt runs as written, never as it was)."""

    def __init__(self, source_only: bool) -> None:
        self.source_only = source_only  # the source even where the build is current (tests compare both)

    def find_spec(self, name: str, path, target=None):
        if not name.startswith("llmship.") or not path:
            return None
        leaf = name.rpartition(".")[2]
        for entry in path:
            source = _os.path.join(entry, leaf + ".py")
            try:
                source_mtime = _os.stat(source).st_mtime_ns
            except OSError:
                continue
            for suffix in _machinery.EXTENSION_SUFFIXES:
                try:
                    built_mtime = _os.stat(_os.path.join(entry, leaf + suffix)).st_mtime_ns
                except OSError:
                    continue
                if self.source_only or source_mtime > built_mtime + _INSTALL_SKEW_NS:
                    return _util.spec_from_file_location(name, source)
                return None  # the build: Python's finder
            return None  # no build: Python's finder takes the source
        return None


def compiled(module) -> bool:
    """True when ``module`` runs from its compiled build."""
    return (getattr(module, "__file__", "") or "").endswith(tuple(_machinery.EXTENSION_SUFFIXES))


SOURCE_TWIN = _SourceTwin(NO_EXTENSIONS)
_sys.meta_path.insert(0, SOURCE_TWIN)
