"""The alert rules page when they must, and only then: deploy/prometheus/tests.yml run
through ``promtool test rules`` (skipped where promtool is not installed)."""

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


def _rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def _annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations as promtool expands them for an alert with ``labels``: only
    ``{{ $labels.x }}`` is filled in here; an annotation with any other template needs its
    expected text written in tests.yml."""
    out = {}
    for name, text in rule.get("annotations", {}).items():
        text = LABEL_REF.sub(lambda m: labels.get(m.group(1), ""), text)
        assert "{{" not in text, f"{rule['alert']}: write its {name} in tests.yml"
        out[name] = text
    return out


def _filled(tests: dict[str, Any]) -> dict[str, Any]:
    """``tests`` with each expected alert's annotations taken from its rule (where the
    test gives none) and the rule file named by its absolute path."""
    rules = _rules()
    tests["rule_files"] = [str(PROMETHEUS / name) for name in tests["rule_files"]]
    for test in tests["tests"]:
        for check in test.get("alert_rule_test", []):
            rule = rules[check["alertname"]]
            for alert in check.get("exp_alerts") or []:
                if "exp_annotations" not in alert:
                    alert["exp_annotations"] = _annotations(rule, alert.get("exp_labels", {}))
    return tests


def test_every_scenario_names_rules_that_exist() -> None:
    tests = yaml.safe_load((PROMETHEUS / "tests.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    named = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])}
    assert {"RelayBrokerDown", "RelayNoWorker"} <= named <= set(_rules())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_alert_rules_pass_their_promtool_tests(tmp_path: Path) -> None:
    """Among them: a Kafka outage on a quiet relay (4 requests a minute, all 503, scrapes
    all answered) pages RelayBrokerDown, which nothing else did."""
    tests = _filled(yaml.safe_load((PROMETHEUS / "tests.yml").read_text()))
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    run = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
