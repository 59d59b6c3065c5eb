#!/usr/bin/env python3
"""Generate the ingester's ClusterRole from the two compiled-in asset files.

Single source of truth for the ClusterRole rules: the asset files

    crates/ingester/router/assets/static          one group/version/resource/Kind per line
    crates/ingester/manager/assets/managed_groups one API group per line

This script writes the rules into both

    deploy/chart/resources-ingester/templates/clusterrole.yaml   (Helm template)
    deploy/manifests/02-clusterrole.yaml                         (chart rendered with defaults)

so the chart and the plain manifests can never disagree, and neither can drift from the assets.

Usage (from anywhere; paths are relative to the repository root):

    python3 deploy/gen-rbac.py            # rewrite the two files
    python3 deploy/gen-rbac.py --check    # exit 1 (and print a diff) when either file is stale
    python3 deploy/gen-rbac.py --print    # print the rules block only

Options --static, --managed-groups, --out-template and --out-manifest override the paths
(used by tests and when generating for route files other than the compiled-in ones).

Parsing follows the ingester (spec section 4): blank lines are ignored, surrounding whitespace is
trimmed, lines starting with '#' are comments, a static line must have exactly four '/'-separated
segments (group may be empty for the core group) with non-empty version, resource and Kind, else it
is skipped with a warning on stderr naming the line. Python 3.8+ standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_STATIC = REPO / "crates/ingester/router/assets/static"
DEFAULT_MANAGED = REPO / "crates/ingester/manager/assets/managed_groups"
DEFAULT_TEMPLATE = REPO / "deploy/chart/resources-ingester/templates/clusterrole.yaml"
DEFAULT_MANIFEST = REPO / "deploy/manifests/02-clusterrole.yaml"

VERBS = ["get", "list", "watch"]

# Labels of the chart rendered with defaults: release name "resources-ingester", chart version
# from Chart.yaml. Keep in step with templates/_helpers.tpl (the generator reads Chart.yaml).
RELEASE = "resources-ingester"

# DNS-1123 subdomain (API group) and a lower-case plural resource name.
GROUP_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
RESOURCE_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def warn(msg: str) -> None:
    print(f"gen-rbac: warning: {msg}", file=sys.stderr)


def read_static(path: pathlib.Path) -> dict[str, set[str]]:
    """group -> set of plural resources."""
    out: dict[str, set[str]] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("/")
        if len(parts) != 4:
            warn(f"{path}:{n}: skipping {line!r}: want group/version/resource/Kind (4 segments)")
            continue
        group, version, resource, kind = (p.strip() for p in parts)
        if not version or not resource or not kind:
            warn(f"{path}:{n}: skipping {line!r}: empty version, resource or Kind")
            continue
        if group and not GROUP_RE.match(group):
            warn(f"{path}:{n}: skipping {line!r}: {group!r} is not a valid API group")
            continue
        if not RESOURCE_RE.match(resource):
            warn(f"{path}:{n}: skipping {line!r}: {resource!r} is not a valid resource name")
            continue
        out.setdefault(group, set()).add(resource)
    return out


def read_managed(path: pathlib.Path) -> list[str]:
    groups: set[str] = set()
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not GROUP_RE.match(line):
            warn(f"{path}:{n}: skipping {line!r}: not a valid API group")
            continue
        groups.add(line)
    return sorted(groups)


def q(s: str) -> str:
    # Every string is double-quoted: "" for the core group and "*" must be quoted anyway, and a
    # uniform style keeps diffs readable. Inputs are validated above, so no escaping is needed.
    return '"' + s + '"'


def rules_yaml(static: dict[str, set[str]], managed: list[str]) -> str:
    """The `rules:` list, indented for a top-level `rules:` key (deterministic order)."""
    lines: list[str] = []
    verbs = "[" + ", ".join(q(v) for v in VERBS) + "]"
    lines.append("# Static routes (crates/ingester/router/assets/static): exactly these resources.")
    for group in sorted(static):
        resources = sorted(static[group])
        lines.append(f"- apiGroups: [{q(group)}]")
        lines.append("  resources: [" + ", ".join(q(r) for r in resources) + "]")
        lines.append(f"  verbs: {verbs}")
    # The cluster identity (crates/ingester/src/cluster.rs): the uid of this one namespace. No
    # rule for selfsubjectaccessreviews (`resources-ingester check`): every authenticated
    # identity may create them through the default ClusterRole system:basic-user.
    lines.append("# Cluster identity: the uid of namespace kube-system (CLUSTER_ID replaces it).")
    lines.append('- apiGroups: [""]')
    lines.append('  resources: ["namespaces"]')
    lines.append('  resourceNames: ["kube-system"]')
    lines.append('  verbs: ["get"]')
    if managed:
        lines.append(
            "# Managed groups (crates/ingester/manager/assets/managed_groups): every resource of"
        )
        lines.append("# each group, since their CRDs come and go at run time.")
        for group in managed:
            lines.append(f"- apiGroups: [{q(group)}]")
            lines.append('  resources: ["*"]')
            lines.append(f"  verbs: {verbs}")
    return "\n".join(lines) + "\n"


def chart_version(chart_yaml: pathlib.Path) -> str:
    for line in chart_yaml.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^version:\s*['\"]?([^'\"\s]+)", line)
        if m:
            return m.group(1)
    raise SystemExit(f"gen-rbac: no version in {chart_yaml}")


def app_version(chart_yaml: pathlib.Path) -> str:
    for line in chart_yaml.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^appVersion:\s*['\"]?([^'\"\s]+)", line)
        if m:
            return m.group(1)
    raise SystemExit(f"gen-rbac: no appVersion in {chart_yaml}")


HEADER = """\
# GENERATED by deploy/gen-rbac.py from crates/ingester/router/assets/static and
# crates/ingester/manager/assets/managed_groups. DO NOT EDIT: edit the asset files and run
#   python3 deploy/gen-rbac.py
# CI runs `python3 deploy/gen-rbac.py --check`, which fails when this file is stale.
"""


def render_template(rules: str) -> str:
    body = "\n".join(("  " + l) if l else l for l in rules.rstrip("\n").split("\n"))
    return (
        HEADER
        + """{{- if .Values.rbac.create }}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ include "resources-ingester.clusterRoleName" . }}
  labels:
    {{- include "resources-ingester.labels" . | nindent 4 }}
rules:
"""
        + body
        + """
  {{- with .Values.rbac.extraClusterRules }}
  # rbac.extraClusterRules (for kinds added through a route-file ConfigMap)
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
"""
    )


def render_manifest(rules: str, chart_ver: str, app_ver: str) -> str:
    return (
        HEADER
        + f"""---
# Source: resources-ingester/templates/clusterrole.yaml
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {RELEASE}
  labels:
    helm.sh/chart: resources-ingester-{chart_ver}
    app.kubernetes.io/name: resources-ingester
    app.kubernetes.io/instance: {RELEASE}
    app.kubernetes.io/version: "{app_ver}"
    app.kubernetes.io/managed-by: Helm
rules:
"""
        + rules
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when an output file is stale")
    ap.add_argument("--print", action="store_true", help="print the rules and exit")
    ap.add_argument("--static", type=pathlib.Path, default=DEFAULT_STATIC)
    ap.add_argument("--managed-groups", type=pathlib.Path, default=DEFAULT_MANAGED)
    ap.add_argument("--out-template", type=pathlib.Path, default=DEFAULT_TEMPLATE)
    ap.add_argument("--out-manifest", type=pathlib.Path, default=DEFAULT_MANIFEST)
    ap.add_argument(
        "--chart-yaml",
        type=pathlib.Path,
        default=REPO / "deploy/chart/resources-ingester/Chart.yaml",
    )
    args = ap.parse_args(argv)

    static = read_static(args.static)
    managed = read_managed(args.managed_groups)
    if not static:
        print(f"gen-rbac: no valid route in {args.static}", file=sys.stderr)
        return 2
    if "customresourcedefinitions" not in static.get("apiextensions.k8s.io", set()) and managed:
        warn(
            "managed groups are configured but customresourcedefinitions is not a static route: "
            "the CRD manager will never see a CRD"
        )
    if "secrets" in static.get("", set()):
        warn(
            "the static routes include Secrets (/v1/secrets): the ClusterRole lets the ingester read "
            "every Secret's values. They are stored redacted (REDACT_SENSITIVE=true, the default: "
            "data, stringData and the last-applied annotation keep their keys, lose their values); "
            "see docs/operations.md, 'What is stored'"
        )
    rules = rules_yaml(static, managed)
    if args.print:
        sys.stdout.write(rules)
        return 0

    outputs = {
        args.out_template: render_template(rules),
        args.out_manifest: render_manifest(
            rules, chart_version(args.chart_yaml), app_version(args.chart_yaml)
        ),
    }
    stale = 0
    for path, want in outputs.items():
        have = path.read_text(encoding="utf-8") if path.exists() else None
        if have == want:
            continue
        if args.check:
            stale += 1
            print(f"gen-rbac: {path} is stale; run: python3 deploy/gen-rbac.py", file=sys.stderr)
            sys.stderr.writelines(
                difflib.unified_diff(
                    (have or "").splitlines(keepends=True),
                    want.splitlines(keepends=True),
                    fromfile=f"{path} (committed)",
                    tofile=f"{path} (generated)",
                )
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(want, encoding="utf-8")
            print(f"gen-rbac: wrote {path}")
    if args.check:
        if stale:
            return 1
        print("gen-rbac: ClusterRole is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
