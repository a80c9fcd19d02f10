"""llmship: a local agent that ships LLM telemetry (metrics, spans, LLM Observability events, logs)."""

__version__ = "0.1.0"

import importlib.machinery as _machinery
import importlib.util as _util
import os as _os
import sys as _sys


def no_extensions(environ=_os.environ) -> bool:
    """LLMSHIP_NO_EXTENSIONS set to anything but "" or "0" forces the pure-Python twin of every native fast
    path (msgspec decode, the compiled span encoder, the Hyperscan scrub prefilter, the hot path's compiled
    modules), as AIOHTTP_NO_EXTENSIONS does for aiohttp."""
    return environ.get("LLMSHIP_NO_EXTENSIONS", "") not in ("", "0")


NO_EXTENSIONS = no_extensions()  # read once, at import: what the twins of this process use


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
        self.fallbacks: dict[str, str] = {}  # module -> why its build did not load (its source runs)

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
                built = _os.path.join(entry, leaf + suffix)
                return _util.spec_from_file_location(name, built, loader=_BuildOrSource(name, built, source))
            return None  # no build: Python's finder takes the source
        return None


class _BuildOrSource(_machinery.ExtensionFileLoader):
    """Loads a compiled module, or its source when the build cannot be loaded (built for another Python
    or libc, a damaged file): the twin runs, with a warning, rather than the agent failing to start."""

    def __init__(self, name: str, built: str, source: str) -> None:
        super().__init__(name, built)
        self.source = source
        self.fallback = None  # the source's loader, once the build failed

    def create_module(self, spec):
        try:
            return super().create_module(spec)
        except ImportError as e:
            import warnings
            warnings.warn(f"{spec.name}: its compiled build did not load ({e}); running its source",
                          RuntimeWarning, stacklevel=2)
            SOURCE_TWIN.fallbacks[spec.name] = str(e)
            self.fallback = _machinery.SourceFileLoader(spec.name, self.source)
            spec.origin = self.source
            return None  # a plain module, for the source

    def exec_module(self, module) -> None:
        if self.fallback is None:
            return super().exec_module(module)
        module.__file__ = self.source
        module.__cached__ = _util.cache_from_source(self.source)
        return self.fallback.exec_module(module)


def compiled(module) -> bool:
    """True when ``module`` runs from its compiled build."""
    return (getattr(module, "__file__", "") or "").endswith(tuple(_machinery.EXTENSION_SUFFIXES))


SOURCE_TWIN = _SourceTwin(NO_EXTENSIONS)
_sys.meta_path.insert(0, SOURCE_TWIN)
