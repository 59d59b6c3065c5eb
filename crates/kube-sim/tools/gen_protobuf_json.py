#!/usr/bin/env python3
"""Generates crates/kube-sim/src/protobuf/messages.rs: one `message!` line per k8s-pb message
reachable from the kinds kube-sim decodes from protobuf request bodies.

Field names come from the k8s-pb sources (prost's snake_case of the proto field names); the JSON
names come from k8s-openapi's serde code (the API's own spelling: podIPs, hostIPC, ...), matched
by lower-case letters and digits. Run from the workspace root after changing either crate:

    python3 crates/kube-sim/tools/gen_protobuf_json.py ~/.cargo/registry/src/*/k8s-pb-0.9.0 \
        ~/.cargo/registry/src/*/k8s-openapi-0.29.0 > crates/kube-sim/src/protobuf/messages.rs
"""
import os, re, sys

PB, OPENAPI = sys.argv[1], sys.argv[2]
ROOTS = [
    "api::core::v1::Namespace", "api::core::v1::ConfigMap", "api::core::v1::Secret",
    "api::core::v1::Pod", "api::core::v1::Service", "api::apps::v1::Deployment",
    "api::autoscaling::v1::Scale", "api::authorization::v1::SelfSubjectAccessReview",
]
# Converted by hand in protobuf.rs (their JSON form is not an object of their fields).
SPECIAL = {
    "apimachinery::pkg::api::resource::Quantity", "apimachinery::pkg::apis::meta::v1::Time",
    "apimachinery::pkg::apis::meta::v1::MicroTime", "apimachinery::pkg::util::intstr::IntOrString",
    "apimachinery::pkg::apis::meta::v1::FieldsV1", "apimachinery::pkg::apis::meta::v1::Duration",
    "apimachinery::pkg::runtime::RawExtension",
}

structs = {}  # "mod::path::Name" -> [(field, type)]
for dirpath, _, files in os.walk(os.path.join(PB, "src")):
    for f in files:
        if f != "mod.rs":
            continue
        rel = os.path.relpath(dirpath, os.path.join(PB, "src"))
        mod = rel.replace(os.sep, "::")
        text = open(os.path.join(dirpath, f)).read()
        for m in re.finditer(r"pub struct (\w+) \{(.*?\n)\}", text, re.S):
            fields = re.findall(r"pub (r#\w+|\w+):\s*(.*?),\n", m.group(2), re.S)
            structs[f"{mod}::{m.group(1)}"] = [(n, " ".join(t.split())) for n, t in fields]

def resolve(mod, path):
    """A type path as written in module `mod` -> absolute "a::b::Name"."""
    parts = path.split("::")
    base = mod.split("::")
    while parts and parts[0] == "super":
        parts.pop(0)
        base.pop()
    if len(parts) == 1:
        return "::".join(base + parts)
    return "::".join(base + parts) if base else "::".join(parts)

def referenced(mod, ty):
    out = []
    for p in re.findall(r"((?:super::)*(?:\w+::)*[A-Z]\w*)", ty):
        if p.split("::")[-1] in ("Option", "Vec", "BTreeMap", "String"):
            continue
        if p.startswith(("prost::", "core::")) or "alloc::" in p:
            continue
        out.append(resolve(mod, p))
    return out

# (module, lower-case struct name) -> {normalized name: JSON name}, from k8s-openapi's deserializers.
json_names = {}
# The newest Kubernetes version k8s-openapi knows: k8s-pb may carry fields newer than ours.
root = os.path.join(OPENAPI, "src", max(d for d in os.listdir(os.path.join(OPENAPI, "src")) if d.startswith("v1_")))
for dirpath, _, files in os.walk(root):
    mod = os.path.relpath(dirpath, root).replace(os.sep, "::")
    for f in files:
        text = open(os.path.join(dirpath, f)).read()
        m = re.search(r"pub struct (\w+) \{", text)
        if not m:
            continue
        names = re.findall(r'"([^"]+)" => Field::Key_', text)
        json_names[f"{mod}::{m.group(1).lower()}"] = {re.sub(r"[^a-z0-9]", "", n.lower()): n for n in names}

def json_name(struct, field, ty):
    """The field's JSON name, or None for an embedded struct."""
    key = re.sub(r"[^a-z0-9]", "", field.replace("r#", "").lower())
    mod, name = struct.rsplit("::", 1)
    known = json_names.get(f"{mod}::{name.lower()}")  # AwsElastic... is AWSElastic... there
    if known is not None and key in known:
        return known[key]
    if known is None:
        # A struct k8s-openapi flattens into its parent (EphemeralContainerCommon): the name as
        # spelled in every other struct, if it is spelled one way.
        spellings = {k[key] for k in json_names.values() if key in k}
        if len(spellings) == 1:
            return spellings.pop()
    if is_embedded(struct, field, ty):
        return None
    # A field newer than k8s-openapi: proto names are the JSON names, lowerCamelCase.
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), field.replace("r#", ""))
    print(f"note: {struct}.{field} is not in k8s-openapi; using {camel}", file=sys.stderr)
    return camel

def is_embedded(struct, field, ty):
    """An embedded Go struct (`json:",inline"`): its fields belong to the enclosing object. The
    proto field is named after the embedded type, except Probe's ProbeHandler (`handler`)."""
    types = referenced(struct.rsplit("::", 1)[0], ty)
    if not ty.startswith("::core::option::Option<") or len(types) != 1:
        return False
    type_name = types[0].rsplit("::", 1)[-1]
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type_name).lower()
    return field == snake or (struct.endswith("::Probe") and field == "handler")

def field_line(struct, n, ty):
    name = json_name(struct, n, ty)
    return f"{n} => inline" if name is None else f'{n} => "{name}"'

seen, order, todo = set(), [], list(ROOTS)
while todo:
    t = todo.pop(0)
    if t in seen or t in SPECIAL:
        continue
    if t not in structs:
        sys.exit(f"unknown type {t}")
    seen.add(t)
    order.append(t)
    mod = t.rsplit("::", 1)[0]
    for _, ty in structs[t]:
        todo.extend(referenced(mod, ty))

print("// @generated by crates/kube-sim/tools/gen_protobuf_json.py from k8s-pb and k8s-openapi; do not edit.")
print("// One line per message: each field of the k8s-pb struct and its JSON name.")
print("// The `message!` macro is defined in protobuf/mod.rs, before this module.")
print()
for t in sorted(order):
    fields = ", ".join(field_line(t, n, ty) for n, ty in structs[t])
    print(f"message!({t} {{ {fields} }});")
