"""Configuration file + spawn-contract environment."""

from __future__ import annotations

import os

import pytest

from vertebra_agent.agent import Config, ConfigError, load_actor

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "agent.toml")


def test_example_config_and_env_override():
    cfg = Config.from_file(EXAMPLE)
    assert cfg.jid == "rd00-s00000@localhost/agent" and cfg.dispatchers == [
        "dispatcher@localhost/dispatcher"]
    cfg.apply_env({"VERTEBRA_SERVER": "127.0.0.1:15222", "VERTEBRA_JID": "a@b.example/x",
                   "VERTEBRA_PASSWORD": "pw", "VERTEBRA_DISPATCHER": "d@b.example/d",
                   "VERTEBRA_TEST_PROFILE": "1", "VERTEBRA_LOAD_INTERVAL_MS": "250"}).validate()
    assert (cfg.server, cfg.jid, cfg.password) == ("127.0.0.1:15222", "a@b.example/x", "pw")
    assert cfg.dispatchers == ["d@b.example/d"] and cfg.test_profile
    assert cfg.load_interval_ms == 250


def test_spawn_contract_details():
    cfg = Config(jid="a@b.example").apply_env({"VERTEBRA_TEST_PROFILE": "true",
                                               "VERTEBRA_LOAD_INTERVAL_MS": "50"}).validate()
    assert not cfg.test_profile  # only "1" enters test mode [VAP-TPF-020]
    assert cfg.load_interval_ms == 1000  # out of range ignored [VAP-TPF-021]
    assert cfg.jid == "a@b.example/agent"  # [VAP-TRN-015]
    assert cfg.dispatchers == ["dispatcher@b.example/dispatcher"]  # [VAP-TRN-018]


def test_bad_configs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError):
        Config(jid="nodomain").validate()
    with pytest.raises(ConfigError):
        Config.from_mapping({"jid": "a@b", "colour": "red"})
    bad = tmp_path / "bad.toml"
    bad.write_text("jid = ")
    with pytest.raises(ConfigError):
        Config.from_file(str(bad))
    with pytest.raises(ConfigError):
        Config.from_file(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError):
        load_actor("no.such.module:Thing")


def test_example_actor_loads():
    import sys

    sys.path.insert(0, os.path.join(HERE, ".."))
    actor = load_actor("examples.gems:Gems")
    assert "/gem/list" in actor.operations()
