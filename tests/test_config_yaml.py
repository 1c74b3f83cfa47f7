"""The YAML config loader: list keys given a single value, and syntax errors that say
what is wrong.

Why: ``upstreams: /etc/resolv.conf`` used to be split into its characters (``'e':
expected HOST:PORT``) while ``zones: cluster.local`` was accepted; and a YAML syntax
error named the line but not the problem.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from clusterdns import config
from clusterdns.config import Config, ConfigError
from conftest import ROOT


def list_typed_keys() -> list[str]:
    """Every Config field whose type is a tuple, list, set or frozenset, read from the
    field definitions themselves (not from the loader), so a new list key lands here."""
    hints = typing.get_type_hints(Config)
    return sorted(f.name for f in dataclasses.fields(Config)
                  if typing.get_origin(hints[f.name]) in (tuple, list, set, frozenset))


# One valid value, unlike the default, for each list key. A new list key fails
# test_every_list_key_has_a_sample until it gets one here.
SAMPLES: dict[str, str] = {
    "zones": "example.internal",
    "listen": "127.0.0.1:5353",
    "namespaces": "default",
    "upstreams": "/etc/resolv.conf",
    "fallthrough": "in-addr.arpa",
    "autopath_zones": "cluster.local",
    "multicluster_zones": "clusterset.local",
    "transfer_to": "10.0.0.0/8",
    "transfer_zones": "in-addr.arpa",
}


def test_the_list_keys_found_in_the_field_definitions_include_the_known_ones() -> None:
    assert set(SAMPLES) <= set(list_typed_keys())
    assert set(list_typed_keys()) == config.LIST_KEYS


def test_every_list_key_has_a_sample() -> None:
    missing = [key for key in list_typed_keys() if key not in SAMPLES]
    assert not missing, f"add a sample value to SAMPLES for the list keys {missing}"


@pytest.mark.parametrize("key", list_typed_keys())
def test_a_single_string_for_a_list_key_is_the_same_config_as_a_one_element_list(
        key: str) -> None:
    value = SAMPLES[key]
    as_list = config.from_mapping({key: [value]}, "test.yaml")
    as_string = config.from_mapping({key: value}, "test.yaml")
    assert as_string == as_list
    assert getattr(as_string, key) != getattr(Config(), key), "the sample is the default"
    assert len(getattr(as_string, key)) == 1


@pytest.mark.parametrize("key", list_typed_keys())
def test_a_single_string_for_a_list_key_reads_the_same_from_a_yaml_file(
        tmp_path: Path, key: str) -> None:
    value = SAMPLES[key]
    single, listed = tmp_path / "single.yaml", tmp_path / "listed.yaml"
    single.write_text(f"{key}: {value}\n", encoding="utf-8")
    listed.write_text(f"{key}:\n  - {value}\n", encoding="utf-8")
    assert config.load(single) == config.load(listed)


def test_upstreams_given_the_path_of_a_resolv_conf_is_that_one_path() -> None:
    cfg = config.from_mapping({"upstreams": "/etc/resolv.conf"}, "test.yaml")
    assert cfg.upstreams == ("/etc/resolv.conf",)
    cfg = config.from_mapping({"upstreams": "10.96.0.10"}, "test.yaml")
    assert cfg.upstreams == ("10.96.0.10:53",)


def test_an_empty_string_for_a_list_key_is_an_empty_list() -> None:
    cfg = config.from_mapping({"upstreams": "", "fallthrough": "", "namespaces": ""})
    assert (cfg.upstreams, cfg.fallthrough, cfg.namespaces) == ((), frozenset(), frozenset())
    with pytest.raises(ConfigError, match="zones: expected a non-empty list"):
        config.from_mapping({"zones": ""}, "test.yaml")


def test_namespaces_still_read_a_comma_separated_string() -> None:
    cfg = config.from_mapping({"namespaces": "a, b"}, "test.yaml")
    assert cfg.namespaces == frozenset({"a", "b"})


def test_a_bad_single_value_names_the_key_and_the_whole_value() -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"upstreams": "dns.example:53"}, "test.yaml")
    assert err.value.key == "upstreams"
    assert "'dns.example:53'" in str(err.value)


# ------------------------------------------------------------------ YAML syntax errors


SYNTAX_ERRORS: dict[str, tuple[str, int, str]] = {
    # case: (text, line, PyYAML's problem)
    "a mapping inside a plain value": ("ttl: 5\nzones: cluster.local: x\n", 2,
                                       "mapping values are not allowed here"),
    "a tab indenting a key": ("ttl: 5\n\tzones: [cluster.local]\n", 2,
                              r"found character '\t' that cannot start any token"),
    "an unclosed flow list": ("ttl: 5\nzones: [cluster.local\nlisten: [':53']\n", 3,
                              "expected ',' or ']', but got ':'"),
    "an unclosed quote": ('ttl: 5\nlabels: "app=web\n', 3, "found unexpected end of stream"),
}


@pytest.mark.parametrize("case", sorted(SYNTAX_ERRORS))
def test_a_yaml_syntax_error_names_the_file_the_line_and_the_problem(
        tmp_path: Path, case: str) -> None:
    text, line, problem = SYNTAX_ERRORS[case]
    path = tmp_path / "clusterdns.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: (syntax): not valid YAML at line {line}, column ")
    assert problem in message, message


def test_an_unclosed_flow_list_also_says_where_the_list_started(tmp_path: Path) -> None:
    path = tmp_path / "clusterdns.yaml"
    path.write_text("ttl: 5\nzones: [cluster.local\nlisten: [':53']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"while parsing a flow sequence at line 2\)$"):
        config.load(path)


def test_a_yaml_error_without_a_position_is_still_explained() -> None:
    assert config.yaml_problem(yaml.YAMLError("something odd")) == \
        "not valid YAML: something odd"


def test_check_config_on_a_yaml_syntax_error_prints_the_problem_and_exits_2(
        tmp_path: Path) -> None:
    path = tmp_path / "clusterdns.yaml"
    path.write_text("ttl: 5\nzones: cluster.local: x\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "clusterdns", "check-config", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"clusterdns: {path}: (syntax): not valid YAML at line 2, column 21: "
        "mapping values are not allowed here\n"), result.stderr
    assert result.stdout == ""
