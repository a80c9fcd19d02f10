"""Shared fixtures: the real intake and agent processes (see harness.py)."""

from __future__ import annotations

import pytest

from harness import Agent, Intake


@pytest.fixture
def intake(start_intake):
    return start_intake()


@pytest.fixture
def start_intake(tmp_path):
    """Start an intake with fault flags: ``start_intake("--fail-first", "3")``."""
    started = []

    def start(*flags: str) -> Intake:
        server = Intake(tmp_path, *flags)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_agent(tmp_path, start_intake):
    """Start the agent: ``start_agent(config_toml, intake=intake)``; stopped (SIGTERM) after the test.

    It depends on start_intake so that agents stop before the intakes they ship to: an agent whose intake
    is gone would wait out its whole drain timeout.
    """
    started = []

    def start(config: str = "", intake: Intake | None = None, **kwargs) -> Agent:
        agent = Agent(tmp_path, config, intake=intake, **kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
