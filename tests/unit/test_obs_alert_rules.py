"""The alert rules page when they must, and only then: deploy/prometheus/tests.yml run
through ``promtool test rules`` (skipped where promtool is not installed; `.ci/run`
installs it where apt can), with a scenario where each rule fires and one where it must
not."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
LABEL_REF = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")
# ``{{ $value }}`` and its pipes (humanizePercentage...): what the expression measured,
# said as VALUE in the rules the scenarios run against.  Whether the template is right is
# promtool's ``check rules``; whether the rule fires is the scenarios'.
VALUE_REF = re.compile(r"\{\{\s*\$value\b[^}]*\}\}")
VALUE = "VALUE"
NO_PROMTOOL = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return groups


def _rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in _groups() for rule in group["rules"]}


def _scenarios() -> dict[str, Any]:
    tests: dict[str, Any] = yaml.safe_load((PROMETHEUS / "tests.yml").read_text())
    return tests


def _annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations as promtool expands them for an alert with ``labels``, in
    the rules with each ``{{ $value }}`` said as VALUE; any other template needs its
    expected text written in tests.yml."""
    out = {}
    for name, text in rule.get("annotations", {}).items():
        text = VALUE_REF.sub(VALUE, text)
        text = LABEL_REF.sub(lambda m: labels.get(m.group(1), ""), text)
        assert "{{" not in text, f"{rule['alert']}: write its {name} in tests.yml"
        out[name] = text
    return out


def _valueless_rules(path: Path) -> None:
    """alerts.yml at ``path``, each annotation's ``{{ $value }}`` said as VALUE."""
    groups = _groups()
    for group in groups:
        for rule in group["rules"]:
            for name, text in rule.get("annotations", {}).items():
                rule["annotations"][name] = VALUE_REF.sub(VALUE, text)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))


def _filled(tests: dict[str, Any], rules_path: Path) -> dict[str, Any]:
    """``tests`` with each expected alert's annotations taken from its rule (where the
    test gives none) and the rule file named by ``rules_path``."""
    rules = _rules()
    tests["rule_files"] = [str(rules_path)]
    for test in tests["tests"]:
        for check in test.get("alert_rule_test", []):
            rule = rules[check["alertname"]]
            for alert in check.get("exp_alerts") or []:
                if "exp_annotations" not in alert:
                    alert["exp_annotations"] = _annotations(rule, alert.get("exp_labels", {}))
    return tests


def test_every_rule_has_a_scenario_where_it_fires_and_one_where_it_must_not() -> None:
    """A rule with no scenario is a rule nobody has seen fire, or stay quiet."""
    tests = _scenarios()
    assert tests["rule_files"] == ["alerts.yml"]
    checks = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    rules = set(_rules())
    assert fires | quiet <= rules, "scenarios of rules that do not exist"
    assert rules - fires == set(), "rules never seen firing"
    assert rules - quiet == set(), "rules never seen staying quiet"


def test_the_annotations_are_filled_in_as_promtool_expands_them() -> None:
    rule = {
        "alert": "X",
        "annotations": {
            "summary": "p99 of {{ $labels.endpoint }} is above 5s",
            "description": "now {{ $value | humanizePercentage }}, {{$value}} and {{ $labels.no }}.",
        },
    }
    assert _annotations(rule, {"endpoint": "/v1/embeddings"}) == {
        "summary": "p99 of /v1/embeddings is above 5s",
        "description": "now VALUE, VALUE and .",
    }


@NO_PROMTOOL
def test_the_alert_rules_and_their_templates_are_valid() -> None:
    run = subprocess.run(
        ["promtool", "check", "rules", str(PROMETHEUS / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@NO_PROMTOOL
def test_the_alert_rules_pass_their_promtool_tests(tmp_path: Path) -> None:
    """Among them: a Kafka outage on a quiet relay (4 requests a minute, all 503, scrapes
    all answered) pages RelayBrokerDown, which nothing else did; a vendor outage under a
    flood of bad keys pages; a short breaker outage that is over does not."""
    rules = tmp_path / "alerts.yml"
    _valueless_rules(rules)
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(_filled(_scenarios(), rules), sort_keys=False))
    run = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _ci_run(tmp_path: Path, apt_get: str) -> subprocess.CompletedProcess[str]:
    """`.ci/run` with redis already up, ``apt_get`` as apt-get and a `make` that says it
    ran, on a PATH where promtool is not (until apt-get puts it there)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "redis-cli": "exit 0",
        "apt-get": apt_get.replace("BIN", str(bin_dir)),
        "make": 'echo "make $*"',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    bash = shutil.which("bash") or "/bin/bash"
    ci = PROMETHEUS.parents[1] / ".ci" / "run"
    return subprocess.run(
        [bash, str(ci)], capture_output=True, text=True, timeout=60, env={"PATH": str(bin_dir)}
    )


def test_ci_goes_on_without_promtool_when_apt_cannot_install_it(tmp_path: Path) -> None:
    run = _ci_run(tmp_path, "exit 100")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "promtool tests will be skipped" in run.stdout
    assert run.stdout.strip().endswith("make test")


def test_ci_installs_promtool_when_it_is_missing(tmp_path: Path) -> None:
    chmod = shutil.which("chmod") or "/bin/chmod"
    put = f'printf "#!/bin/sh\\n" > BIN/promtool; {chmod} +x BIN/promtool'
    installs = f'case "$*" in *prometheus*) {put};; esac'
    run = _ci_run(tmp_path, installs)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "bin" / "promtool").exists()
    assert "skipped" not in run.stdout and run.stdout.strip().endswith("make test")
