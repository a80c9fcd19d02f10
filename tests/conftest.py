"""Shared fixtures: the real intake and agent processes (see harness.py)."""

from __future__ import annotations

import pytest

from harness import Agent, Intake


@pytest.fixture
def intake(tmp_path):
    server = Intake(tmp_path)
    yield server
    server.stop()


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
def start_agent(tmp_path):
    """Start the agent: ``start_agent(config_toml, intake=intake)``; stopped (SIGTERM) after the test."""
    started = []

    def start(config: str = "", intake: Intake | None = None, **kwargs) -> Agent:
        agent = Agent(tmp_path, config, intake=intake, **kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
