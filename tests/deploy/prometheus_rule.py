"""The PrometheusRule of deploy/k8s/components/prometheus-operator, generated from deploy/prometheus/rules.

The Prometheus Operator takes alert rules as PrometheusRule objects; a plain Prometheus (compose, or
deploy/prometheus/prometheus-kubernetes.yml) reads the rules file. One source for both: the object's ``spec`` is the
file's ``groups:`` block as it is written, comments included, so they cannot differ (tests/deploy/test_observability.py
fails when the committed object is not what this module makes of the file). After changing the rules, run:

    .venv/bin/python -m tests.deploy.prometheus_rule
"""

from __future__ import annotations

from pathlib import Path

from foundation.paths import REPO_ROOT

RULES_FILE = REPO_ROOT / "deploy" / "prometheus" / "rules" / "driftloop.yml"
PROMETHEUS_RULE = REPO_ROOT / "deploy" / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
COMMAND = ".venv/bin/python -m tests.deploy.prometheus_rule"

_HEADER = f"""\
# GENERATED from deploy/prometheus/rules/driftloop.yml; edit that file, then run
#   {COMMAND}
# The same alert rules for a Prometheus run by the Prometheus Operator. Its ruleSelector must select this object's
# labels: add the one your Prometheus selects in your overlay (kube-prometheus-stack: `release: <helm release>`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: driftloop
  labels:
    app.kubernetes.io/part-of: driftloop
spec:
"""


def generate(rules_text: str) -> str:
    """The PrometheusRule manifest whose ``spec`` is ``rules_text`` from its ``groups:`` line on.

    Raises:
        ValueError: the text has no top-level ``groups:`` line.
    """
    lines = rules_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise ValueError("the rules file has no top-level `groups:`")
    return _HEADER + "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])


def write(rules_file: Path = RULES_FILE, target: Path = PROMETHEUS_RULE) -> None:
    target.write_text(generate(rules_file.read_text()))


if __name__ == "__main__":
    write()
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO_ROOT)} from {RULES_FILE.relative_to(REPO_ROOT)}")
