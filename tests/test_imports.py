"""An agent imports the optional parts (OTLP: protobuf and opentelemetry-proto, grpc; RE2 for user scrub
rules; ISA-L for level-1 gzip, at the first payload that uses it) only when its config uses them, and no other verb's (the intake's server and SQLite): each costs
memory an agent that never needs it would carry (bench/contexts.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Modules of the optional parts, by prefix.
OPTIONAL = ("google.protobuf", "opentelemetry", "grpc", "llmship.sources.otlp", "llmship.llm.otlp", "re2",
            "sqlite3", "llmship.intake.server", "llmship.intake.store", "isal")

# Parses `llmship run` and builds the topology from a config, as the agent starts, in a fresh interpreter (the
# test process has imported everything), and prints the optional modules it loaded.
_PROBE = """
import json, sys
from llmship.agent import build
from llmship.cli import parser
from llmship.config import load_config_text
parser().parse_args(["run"])
build(load_config_text(sys.argv[1]))
print(json.dumps(sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[2:])))))
"""


def optional_modules_loaded(config: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", _PROBE, config, *OPTIONAL], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_default_config_loads_none_of_them():
    assert optional_modules_loaded("") == []


def test_an_otlp_listener_loads_them():
    # The probe sees them when they are loaded: the test above could fail.
    loaded = optional_modules_loaded('[sources.otlp]\nhttp = "127.0.0.1:4318"\n')
    assert "llmship.sources.otlp" in loaded
    assert any(m.startswith("google.protobuf") for m in loaded)


def test_a_user_scrub_rule_loads_re2():
    loaded = optional_modules_loaded('[[scrub.rules]]\nname = "ticket"\nregex = "TCK-[0-9]+"\n')
    assert "re2" in loaded and not any(m.startswith(("google.protobuf", "opentelemetry")) for m in loaded)


def test_isa_l_loads_with_the_first_compressor_that_uses_it():
    pytest.importorskip("isal")  # no wheel for this platform: zlib, its twin, is used
    probe = ("import sys; from llmship import compression; before = 'isal' in sys.modules; "
             "compression.stream_compressor('gzip', 1, isal=True); print(before, 'isal' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env=os.environ | {"LLMSHIP_NO_EXTENSIONS": ""})
    assert result.stdout.split() == ["False", "True"], result.stderr
