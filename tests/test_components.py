"""Every component of the built topology follows the shared lifecycle contract (components.py), so the
agent can start, reload and shut each down the same way."""

from llmship import agent as agentmod
from llmship.components import Component, Sink, Source
from llmship.config import load_config_text


def test_every_component_of_the_topology_follows_the_contract():
    topology = agentmod.build(load_config_text(""))
    assert topology.sources and topology.sinks
    for source in topology.sources:
        assert isinstance(source, Source), type(source).__name__
    for sink in topology.sinks:
        assert isinstance(sink, Sink), type(sink).__name__
    for component in (topology.delivery, topology.metrics_sink, topology.status):
        assert isinstance(component, Component), type(component).__name__
