"""The hot path's Python modules compiled as they are (setup.py ``COMPILED_MODULES``): the build is used where it
is current, the source (its twin) with LLMSHIP_NO_EXTENSIONS=1 or when the source is newer, and both give the
same outputs for the LLM-heavy mix (bench/llm_calls.py's dump: payloads, series, sketches, counters)."""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmship

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def compiled_modules() -> list[str]:
    """setup.py's COMPILED_MODULES, as module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    names = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "COMPILED_MODULES" for t in node.targets))
    return ["llmship." + name.replace("/", ".") for name in names]


def built(module: str) -> bool:
    base = SRC / Path(*module.split("."))
    return any(base.with_name(base.name + suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


_LOADED_FROM = """
import importlib, json, sys, llmship
print(json.dumps({m: llmship.compiled(importlib.import_module(m)) for m in sys.argv[1:]}))
"""


def loaded_compiled(modules: list[str], no_extensions: str) -> dict[str, bool]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "LLMSHIP_NO_EXTENSIONS": no_extensions}
    done = subprocess.run([sys.executable, "-c", _LOADED_FROM, *modules], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_listed_module_has_a_source_twin():
    modules = compiled_modules()
    assert len(modules) >= 15
    for module in modules:
        assert (SRC / Path(*module.split("."))).with_suffix(".py").is_file(), module


def test_no_extensions_loads_every_module_from_its_source():
    modules = compiled_modules()
    assert loaded_compiled(modules, "1") == {m: False for m in modules}


def test_a_current_build_is_used():
    modules = [m for m in compiled_modules() if built(m)]
    if not modules:
        pytest.skip("the modules are not compiled here (no compiler, or LLMSHIP_NO_EXTENSIONS at install)")
    assert loaded_compiled(modules, "") == {m: True for m in modules}


def test_a_source_newer_than_its_build_is_loaded(tmp_path):
    package = tmp_path / "llmship"
    package.mkdir()
    source = package / "glue.py"
    source.write_text("WHERE = 'source'\n")
    build = package / ("glue" + importlib.machinery.EXTENSION_SUFFIXES[0])
    build.write_bytes(b"")  # never loaded: the finder only compares times
    finder = llmship._SourceTwin(source_only=False)
    os.utime(build, ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    os.utime(source, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    assert finder.find_spec("llmship.glue", [str(package)]).origin == str(build)
    os.utime(source, ns=(2_000_000_001_000_000_000, 2_000_000_001_000_000_000))
    assert finder.find_spec("llmship.glue", [str(package)]).origin == str(build)  # written with it (a wheel)
    os.utime(source, ns=(3_000_000_000_000_000_000, 3_000_000_000_000_000_000))
    spec = finder.find_spec("llmship.glue", [str(package)])
    assert spec is not None and spec.origin == str(source)
    assert llmship._SourceTwin(source_only=True).find_spec("llmship.glue", [str(package)]) is not None
    assert finder.find_spec("other.glue", [str(package)]) is None  # only llmship's modules
    build.unlink()
    assert finder.find_spec("llmship.glue", [str(package)]) is None  # no build: Python's finder, the source


def test_a_build_that_does_not_load_falls_back_to_its_source(tmp_path, monkeypatch):
    """A build made for another Python or libc, or damaged, fails in dlopen: the module's source runs, with
    a warning, and the failure is kept (the agent starts rather than failing on a fast path)."""
    package = tmp_path / "llmship"
    package.mkdir()
    (package / "glue.py").write_text("WHERE = 'source'\n")
    (package / ("glue" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"not a shared object")
    monkeypatch.setattr(llmship, "__path__", [*llmship.__path__, str(package)])
    monkeypatch.delitem(sys.modules, "llmship.glue", raising=False)
    monkeypatch.setattr(llmship.SOURCE_TWIN, "fallbacks", {})
    with pytest.warns(RuntimeWarning, match="llmship.glue: its compiled build did not load"):
        import llmship.glue as glue
    try:
        assert glue.WHERE == "source" and glue.__file__ == str(package / "glue.py")
        assert not llmship.compiled(glue)
        assert "llmship.glue" in llmship.SOURCE_TWIN.fallbacks
    finally:
        sys.modules.pop("llmship.glue", None)


# bench/llm_calls.py's pipeline with the modules from their build or their source (every other fast path as
# installed: only the compiled modules differ between the two runs).
_DUMP = """
import runpy, sys
import llmship
llmship.SOURCE_TWIN.source_only = sys.argv[1] == "source"
sys.path.insert(0, sys.argv[2])
sys.argv = [sys.argv[2] + "/llm_calls.py", *sys.argv[3:]]
import llmship.llm.policies
print("compiled:", llmship.compiled(llmship.llm.policies), file=sys.stderr)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("config, evp", [("default", "0"), ("scrub", "0.3")])
def test_build_and_source_give_the_same_outputs(tmp_path, config, evp):
    if not any(built(m) for m in compiled_modules()):
        pytest.skip("the modules are not compiled here (no compiler, or LLMSHIP_NO_EXTENSIONS at install)")
    dumps = {}
    for way in ("build", "source"):
        out = tmp_path / f"{way}.json"
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": "0", "LLMSHIP_NO_EXTENSIONS": ""}
        done = subprocess.run([sys.executable, "-c", _DUMP, way, str(ROOT / "bench"), "--config", config,
                               "--evp", evp, "--requests", "6", "--dump", str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"compiled: {way == 'build'}" in done.stderr
        dumps[way] = json.loads(out.read_text())
        assert dumps[way]["payloads"], "the pipeline produced nothing"
    assert dumps["build"] == dumps["source"]


def test_a_build_removes_the_compiled_modules_it_does_not_build(tmp_path):
    # A working tree's earlier build of a module (no longer listed, or not built now) would ship in a wheel
    # beside its newer source and load instead of it: the next build removes it. Built here with
    # LLMSHIP_NO_EXTENSIONS=1 (nothing is built, so every compiled module goes), in a copy of the tree.
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "setup.py").write_text((ROOT / "setup.py").read_text())
    (tree / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tree / "README.md").write_text("")
    for source in (SRC / "llmship").rglob("*.py"):
        target = tree / "src" / source.relative_to(SRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    stale = [tree / "src" / "llmship" / f"compression{suffix}",  # not listed
             tree / "src" / "llmship" / "llm" / f"extract{suffix}"]  # listed, not built this time
    in_build = tree / "build" / "lib" / "llmship" / f"aggregation{suffix}"
    kept = tree / "src" / "llmship" / "sinks" / f"_spanenc{suffix}"  # a .pyx extension: no .py twin
    for path in [*stale, in_build, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "--build-lib", "build/lib"],
                          cwd=tree, env={**os.environ, "LLMSHIP_NO_EXTENSIONS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in [*stale, in_build])
    assert kept.exists()


def test_a_damaged_build_of_a_real_module_runs_its_source(tmp_path):
    # In a copy of the tree: the aggregator's build cut to nothing (as a failed copy would leave it); the
    # aggregator loads from its source, with a warning, and the other builds still load.
    if not (built("llmship.aggregation") and built("llmship.llm.policies")):
        pytest.skip("the modules are not compiled here (no compiler, or LLMSHIP_NO_EXTENSIONS at install)")
    copy = tmp_path / "src"
    for path in (SRC / "llmship").rglob("*"):
        if path.suffix == ".py" or path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            target = copy / path.relative_to(SRC)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())  # the sources first: a build is never older than its source
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        damaged = copy / "llmship" / f"aggregation{suffix}"
        if damaged.exists():
            damaged.write_bytes(b"")
    script = ("import json, llmship, llmship.aggregation as a, llmship.llm.policies as p; "
              "print(json.dumps([llmship.compiled(a), llmship.compiled(p), sorted(llmship.SOURCE_TWIN.fallbacks)]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(copy), "LLMSHIP_NO_EXTENSIONS": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False, True, ["llmship.aggregation"]]
    assert "llmship.aggregation: its compiled build did not load" in done.stderr
