"""--watch-namespaces: namespace-scoped mode's list, checked, and the webhook selector it implies."""

from __future__ import annotations

import argparse

import pytest

from kaitopy.controllers.workspace.app import add_arguments, namespace_selector, watch_namespaces

pytestmark = pytest.mark.unit


def test_list_is_parsed_deduplicated_and_empty_means_all() -> None:
    assert watch_namespaces("team-a, team-b,team-a,") == ("team-a", "team-b")
    assert watch_namespaces("") is None and watch_namespaces(" , ") is None


def test_a_bad_name_is_refused_with_the_flag_and_the_fix() -> None:
    with pytest.raises(
        SystemExit, match=r"--watch-namespaces: 'Team_A' is not a namespace name.*team-a,team-b"
    ):
        watch_namespaces("ok,Team_A")


def test_selector_limits_the_webhook_to_the_watched_namespaces() -> None:
    assert namespace_selector(None) is None
    assert namespace_selector(("a", "b")) == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}]
    }


def test_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).watch_namespaces == ""
    args = parser.parse_args(["--watch-namespaces=a,b", "--no-install-webhook-configuration"])
    assert watch_namespaces(args.watch_namespaces) == ("a", "b") and not args.install_webhook_configuration
    monkeypatch.setenv("KAITOPY_WATCH_NAMESPACES", "c")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).watch_namespaces == "c"
