"""Lambda mode's start-up choices: when it applies, where the API key comes from, its default config."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmship.agent import LAMBDA_DEFAULTS
from llmship.aws_lambda import api_key_from_environment, lambda_mode_requested
from llmship.config import ConfigError, load_config

from harness import _subprocess_env

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dd-api-key-AbCdEf"


def test_lambda_mode_is_the_flag_or_the_runtime_api_variable():
    assert lambda_mode_requested(False, {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"})
    assert lambda_mode_requested(True, {})
    assert not lambda_mode_requested(False, {"AWS_LAMBDA_RUNTIME_API": ""})


def test_dd_api_key_wins_over_a_secret_arn_and_nothing_is_fetched():
    assert api_key_from_environment({"DD_API_KEY": "k" * 32, "DD_API_KEY_SECRET_ARN": ARN}) == "k" * 32
    assert api_key_from_environment({}) == ""


def test_a_secret_arn_without_boto3_is_a_clear_start_up_error():
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="DD_API_KEY_SECRET_ARN is set but boto3 is not installed"):
            api_key_from_environment({"DD_API_KEY_SECRET_ARN": ARN})
    else:
        pytest.skip("boto3 is installed: reading the secret would need AWS")


def test_the_lambda_default_config_suits_a_sandbox():
    cfg = load_config(LAMBDA_DEFAULTS, env={"AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_REGION": "eu-west-1"})
    assert cfg.delivery.spool_dir == ""  # the disk does not outlive the sandbox
    assert cfg.status.listen == "127.0.0.1:8124"  # where datadog-lambda libraries find /lambda/flush
    assert (cfg.sources.traces.listen, cfg.sources.dogstatsd.udp) == ("127.0.0.1:8126", "127.0.0.1:8125")
    assert cfg.agent.data_dir.startswith("/tmp/") and cfg.aws_lambda.flush_timeout_secs <= 2
    assert cfg.aws_lambda.telemetry_listen.startswith("sandbox.localdomain:")
    assert {"functionname:fn", "region:eu-west-1"} <= set(cfg.agent.tags)


def test_run_lambda_outside_lambda_says_why_in_one_line():
    done = subprocess.run([sys.executable, "-m", "llmship", "run", "--lambda"], capture_output=True, text=True,
                          timeout=60, env=_subprocess_env(None))
    assert done.returncode == 2
    assert done.stderr == ("llmship: invalid config: --lambda: AWS_LAMBDA_RUNTIME_API is not set "
                           "(Lambda sets it in the sandbox)\n")
