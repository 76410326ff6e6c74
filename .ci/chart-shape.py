"""What the chart's default rendering must hold for the person on call: the
indexer's copies on different nodes, a network policy per component, the
migration under an account of its own that exists before it and a deadline
under Helm's default timeout.

    python chart-shape.py RENDERED.yaml
"""
import sys

import yaml

docs = [doc for doc in yaml.safe_load_all(open(sys.argv[1])) if doc]
by_kind = {}
for doc in docs:
    by_kind.setdefault(doc["kind"], []).append(doc)

indexer = by_kind["StatefulSet"][0]["spec"]["template"]["spec"]
spread = {c["topologyKey"]: c["whenUnsatisfiable"] for c in indexer["topologySpreadConstraints"]}
assert spread.get("kubernetes.io/hostname") == "DoNotSchedule", f"indexer copies may share a node: {spread}"
worker = by_kind["Deployment"][0]["spec"]["template"]["spec"]
assert worker["topologySpreadConstraints"], "workers are not spread"

policies = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in by_kind["NetworkPolicy"]}
assert policies == {"worker", "indexer"}, policies

job = by_kind["Job"][0]
assert job["spec"]["template"]["spec"]["serviceAccountName"].endswith("-migrate"), "the migration runs as the namespace's default"
assert job["spec"]["activeDeadlineSeconds"] < 300, "the migration may outlive Helm's default timeout"
accounts = [a for a in by_kind["ServiceAccount"] if a["metadata"]["name"].endswith("-migrate")]
assert accounts and "pre-install" in accounts[0]["metadata"]["annotations"]["helm.sh/hook"], "the job's account must be a hook too"
print("chart shape: indexers spread over nodes, network policies, the migration's own account")
