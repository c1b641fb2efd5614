"""deployments/setup.py against a real Prefect server: blocks an operator edited are kept, the
API key is generated once, never printed, and never dropped by a re-run or a reset."""

from __future__ import annotations

import pytest
from prefect.blocks.system import Secret

from blocks.shared import API_KEY_BLOCK
from blocks.target import TargetMachine
from deployments.setup import main

pytestmark = pytest.mark.integration


def setup(capsys, *args: str) -> str:
    assert main(["--targets", "spark", "--no-deploy", *args]) == 0
    return capsys.readouterr().out


def test_setup_keeps_edits_and_the_api_key(prefect_server, capsys):
    out = setup(capsys, "--api-key")
    key = Secret.load(API_KEY_BLOCK).get()
    assert len(key) >= 32 and key not in out
    assert "value not shown" in out
    spark = TargetMachine.load("spark")
    assert spark.api_key_secret == API_KEY_BLOCK and not spark.open_to_network()

    out = setup(capsys, "--api-key")  # a re-run: the key clients may already use is kept
    assert Secret.load(API_KEY_BLOCK).get() == key and "kept" in out

    spark.host_port = 8100  # an operator's edit in the UI
    spark.save("spark", overwrite=True)
    out = setup(capsys)
    assert TargetMachine.load("spark").host_port == 8100 and "exists: kept" in out

    out = setup(capsys, "--reset-blocks")  # the defaults again, but never a reopened server
    reset = TargetMachine.load("spark")
    assert reset.host_port == 8000 and reset.api_key_secret == API_KEY_BLOCK
    assert key not in out
