"""SIGHUP reaches every component: each one built from config has a reload(cfg)."""

from __future__ import annotations

from llmship.agent import build
from llmship.config import load_config


def test_every_component_built_from_config_can_reload():
    topology = build(load_config(None))
    components = topology.reloadable()
    assert all(s in components for s in topology.sources + topology.sinks)
    for component in components:
        assert callable(getattr(component, "reload", None)), type(component).__name__
