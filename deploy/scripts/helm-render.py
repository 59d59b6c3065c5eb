#!/usr/bin/env python3
"""Render the chart with the real Helm engine, without a `helm` binary or a cluster.

Helm is not installed on the build machines. The PyPI package `helm-sdkpy` embeds Helm's Go
library (Python >= 3.12); it can install a chart but not `helm template`. So this script starts
kube-sim, `helm install`s the chart into it with the in-memory release driver, and prints the
rendered manifest that Helm reports. With --compare it checks that the plain manifests in
deploy/manifests/ are, object by object and field by field, what Helm renders (exit 1 and the
differences otherwise). kube-sim also accepts every object, so the render is valid for the API.

    python3.12 -m venv /tmp/helmvenv && /tmp/helmvenv/bin/pip install helm-sdkpy pyyaml
    cargo build -p kube-sim
    /tmp/helmvenv/bin/python deploy/scripts/helm-render.py \
        -f deploy/chart/resources-ingester/ci/manifests-values.yaml --compare deploy/manifests
    /tmp/helmvenv/bin/python deploy/scripts/helm-render.py -f deploy/examples/routes-values.yaml \
        --set clusterName=c1 > /tmp/rendered.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/chart/resources-ingester"


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_path(values: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        values = values.setdefault(k, {})
    values[keys[-1]] = yaml.safe_load(value)


def diff(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            diff(a.get(k), b.get(k), f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: helm={a!r} file={b!r}")


PROMETHEUS_OPERATOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{plural: {plural}, singular: {singular}, kind: {kind}, listKind: {kind}List}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"""
# The Prometheus Operator's CRDs the chart can render (ServiceMonitor, PrometheusRule).
MONITORING_CRDS = "---".join(
    PROMETHEUS_OPERATOR_CRD.format(plural=p, singular=s, kind=k)
    for p, s, k in [
        ("servicemonitors", "servicemonitor", "ServiceMonitor"),
        ("prometheusrules", "prometheusrule", "PrometheusRule"),
    ]
)


def complete_hook_jobs(kubeconfig: pathlib.Path, namespace: str, stop: threading.Event) -> None:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    done: set[str] = set()
    status = json.dumps(
        {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    )
    while not stop.wait(0.2):
        out = subprocess.run(
            ["kubectl", "-n", namespace, "get", "jobs", "-o", "json"],
            env=env, capture_output=True, check=False,
        )
        if out.returncode != 0:
            continue
        for job in json.loads(out.stdout).get("items", []):
            name = job["metadata"]["name"]
            if name in done:
                continue
            patched = subprocess.run(
                ["kubectl", "-n", namespace, "patch", "job", name, "--subresource=status",
                 "--type=merge", "-p", status],
                env=env, capture_output=True, check=False,
            )
            if patched.returncode == 0:
                done.add(name)


def main() -> int:
    # Helm's release storage: in memory (kube-sim need not store Helm's release Secrets). The Go
    # runtime inside helm-sdkpy reads the environment the process started with: re-exec.
    if os.environ.get("HELM_DRIVER") != "memory":
        env = dict(os.environ, HELM_DRIVER="memory")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ap = argparse.ArgumentParser()
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--release", default="resources-ingester")
    ap.add_argument("--namespace", default="resources-ingester")
    ap.add_argument("--kube-sim", default=str(REPO / "target/debug/kube-sim"))
    ap.add_argument("--compare", metavar="DIR", help="compare with the YAML files in DIR")
    ap.add_argument(
        "--hooks", action="store_true", help="also print the hooks (the migrate Job)"
    )
    args = ap.parse_args()

    values: dict = {}
    for f in args.values:
        values = merge(values, yaml.safe_load(open(f)) or {})
    for s in args.set:
        k, _, v = s.partition("=")
        set_path(values, k, v)

    from helm_sdkpy.actions import Configuration, Install, Status

    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = pathlib.Path(tmp) / "kubeconfig"
        sim = subprocess.Popen(
            [args.kube_sim, "--kubeconfig-out", str(kubeconfig)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                if kubeconfig.exists() and kubeconfig.stat().st_size:
                    break
                time.sleep(0.05)
            # The Prometheus Operator's CRDs, so that a ServiceMonitor and a PrometheusRule can
            # be rendered too.
            subprocess.run(
                ["kubectl", "apply", "-f", "-"],
                input=MONITORING_CRDS.encode(),
                env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            cfg = Configuration(namespace=args.namespace, kubeconfig=str(kubeconfig))
            # Helm waits for hook Jobs (the migrate Job) to complete; kube-sim runs no Jobs:
            # mark them complete as they appear, as a Job controller would.
            stop = threading.Event()
            completer = threading.Thread(
                target=complete_hook_jobs, args=(kubeconfig, args.namespace, stop), daemon=True
            )
            completer.start()
            try:
                asyncio.run(
                    Install(cfg).run(
                        args.release, str(CHART), values=values, wait=False, timeout=60
                    )
                )
            finally:
                stop.set()
            release = asyncio.run(Status(cfg).run(args.release))
            manifest = release["manifest"]
            if args.hooks:
                for hook in release.get("hooks") or []:
                    manifest += "\n---\n# Source: " + hook.get("path", "hook") + "\n"
                    manifest += hook.get("manifest", "")
        finally:
            sim.terminate()
            sim.wait()

    if not args.compare:
        sys.stdout.write(manifest)
        return 0

    def index(docs):
        return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}

    helm = index(yaml.safe_load_all(manifest))
    files = {}
    for f in sorted(glob.glob(os.path.join(args.compare, "*.yaml"))):
        files.update(index(yaml.safe_load_all(open(f))))
    problems: list[str] = []
    for k in sorted(set(helm) - set(files)):
        problems.append(f"{k}: rendered by Helm, missing from {args.compare}")
    for k in sorted(set(files) - set(helm)):
        problems.append(f"{k}: in {args.compare}, not rendered by Helm")
    for k in sorted(set(helm) & set(files)):
        diff(helm[k], files[k], f"{k[0]}/{k[1]}", problems)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"{len(helm)} objects: {args.compare} matches the Helm render")
    return 0


if __name__ == "__main__":
    sys.exit(main())
