#!/usr/bin/env python3
"""Writes schema/kubernetes.schema: the protobuf wire layout of the Kubernetes built-in kinds
together with the Go facts that decide their JSON form.

Usage: gen_schema.py K8S_IO_API_DIR K8S_IO_APIMACHINERY_DIR VERSION > schema/kubernetes.schema

The inputs are checkouts of k8s.io/api and k8s.io/apimachinery at one tag (VERSION, e.g.
v0.33.13). For each group below, the script reads the message layout from the package's
generated.proto (field numbers, types, labels) and, from the Go structs of the same package, which
fields are pointers (`*T`: written only when set), which are `omitempty` and which are inlined
(`json:",inline"`). It fails when a proto field has no Go struct field, so the table is complete.

Output lines (space-separated):
  G <group or -> <version> <proto package>   an API group version and its proto package
  M <message> <flags>                         K: a kind (runtime.Object); S: a Go named slice
                                              (JSON is its `items` array); -: neither
  F <number> <name> <o|r|m> <type> <go>       o optional, r repeated, m map (type = KEY,VALUE);
                                              go: p pointer, e omitempty, i inline, x json:"-",
                                              j=NAME a JSON name other than the proto name
                                              (last), - none
"""
import os
import re
import sys

# Packages whose kinds the server serves (and the ones they import). Adding a group is one line.
API_PACKAGES = [
    "core/v1", "apps/v1", "batch/v1", "autoscaling/v1", "networking/v1", "discovery/v1",
    "coordination/v1", "policy/v1", "rbac/v1", "certificates/v1", "scheduling/v1", "storage/v1",
    "authentication/v1", "authorization/v1",
]
MACHINERY_PACKAGES = [
    "pkg/apis/meta/v1", "pkg/runtime", "pkg/runtime/schema", "pkg/api/resource", "pkg/util/intstr",
]
# Messages with their own JSON form (custom MarshalJSON in Go); the decoder maps them by name.
CUSTOM = {
    "k8s.io.apimachinery.pkg.apis.meta.v1." + n
    for n in ["Time", "MicroTime", "Duration", "FieldsV1", "Timestamp", "TypeMeta"]
} | {
    "k8s.io.apimachinery.pkg.runtime." + n for n in ["RawExtension", "Unknown", "TypeMeta"]
} | {
    "k8s.io.apimachinery.pkg.api.resource." + n for n in ["Quantity", "QuantityValue"]
} | {"k8s.io.apimachinery.pkg.util.intstr.IntOrString"}

SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
           "fixed32", "fixed64", "sfixed32", "sfixed64", "double", "float"}


def strip_comments(text):
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def parse_proto(path):
    text = strip_comments(open(path).read())
    package = re.search(r"^package\s+([\w.]+);", text, re.M).group(1)
    messages = []
    for m in re.finditer(r"^message\s+(\w+)\s*\{(.*?)^\}", text, re.M | re.S):
        name, body = m.group(1), m.group(2)
        if re.search(r"^\s*(message|enum|oneof)\b", body, re.M):
            sys.exit(f"{path}: {name} has nested declarations, which this script does not handle")
        fields = []
        for f in re.finditer(r"^\s*(optional|repeated)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;", body, re.M):
            fields.append((int(f.group(4)), f.group(3), f.group(1)[0], f.group(2)))
        for f in re.finditer(r"^\s*map<\s*([\w.]+)\s*,\s*([\w.]+)\s*>\s+(\w+)\s*=\s*(\d+)\s*;", body, re.M):
            fields.append((int(f.group(4)), f.group(3), "m", f.group(1) + "," + f.group(2)))
        declared = len(re.findall(r"=\s*\d+\s*;", body))
        if declared != len(fields):
            sys.exit(f"{path}: {name}: parsed {len(fields)} of {declared} fields")
        messages.append((name, sorted(fields)))
    return package, messages


def qualify(type_name, package, local):
    if type_name in SCALARS:
        return type_name
    if "." in type_name:
        return "." + type_name.lstrip(".")
    if type_name in local:
        return "." + package + "." + type_name
    sys.exit(f"{package}: unknown type {type_name}")


STRUCT_RE = re.compile(r"^type\s+(\w+)\s+struct\s*\{\s*$")
FIELD_RE = re.compile(r"^\s*(?:(\w+)\s+)?(\*?[\w.\[\]*]+)\s+`([^`]*)`")
TAG_RE = re.compile(r'(\w+):"([^"]*)"')


def parse_go(directory):
    """Go struct fields with a protobuf tag: {(struct, proto name): flags}; kinds; named slices."""
    fields, kinds, slices, aliases = {}, set(), set(), {}
    for fname in sorted(os.listdir(directory)):
        if not fname.endswith(".go") or fname.endswith("_test.go") or fname.startswith("zz_generated") \
                or fname.endswith(".pb.go"):
            continue
        lines = open(os.path.join(directory, fname)).read().splitlines()
        comments = []
        struct = None
        for line in lines:
            s = line.strip()
            if struct is None:
                if s.startswith("//"):
                    comments.append(s)
                    continue
                m = STRUCT_RE.match(s)
                if m:
                    struct = m.group(1)
                    if any("+k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object" in c
                           for c in comments):
                        kinds.add(struct)
                else:
                    m = re.match(r"^type\s+(\w+)\s+\[\]", s)
                    if m and any("+protobuf.nullable=true" in c for c in comments):
                        slices.add(m.group(1))
                    m = re.match(r"^type\s+(\w+)\s+metav1\.(\w+)\s*$", s)
                    if m:
                        aliases[m.group(1)] = m.group(2)
                if s:
                    comments = []
                continue
            if s == "}":
                struct = None
                continue
            m = FIELD_RE.match(line)
            if not m:
                continue
            go_type, tags = m.group(2), dict(TAG_RE.findall(m.group(3)))
            if "protobuf" not in tags:
                continue
            pname = [p[5:] for p in tags["protobuf"].split(",") if p.startswith("name=")]
            if not pname:
                # go-to-protobuf names an unnamed field after its Go name, lower camel case.
                go_name = m.group(1) or go_type.lstrip("*").split(".")[-1]
                pname = [go_name[0].lower() + go_name[1:]]
            json_parts = tags.get("json", "").split(",")
            flags = ""
            if go_type.startswith("*"):
                flags += "p"
            if "omitempty" in json_parts[1:]:
                flags += "e"
            if json_parts[0] == "" and "inline" in json_parts[1:]:
                flags += "i"
            elif json_parts[0] == "-" or "json" not in tags:
                flags += "x"
            elif json_parts[0] != pname[0]:
                # e.g. IngressClassParametersReference: proto `aPIGroup`, JSON `apiGroup`.
                flags += "j=" + json_parts[0]
            fields[(struct, pname[0])] = flags or "-"
    return fields, kinds, slices, aliases


def main():
    api, machinery, version = sys.argv[1], sys.argv[2], sys.argv[3]
    dirs = [(os.path.join(api, p), "k8s.io/api/" + p) for p in API_PACKAGES] + \
           [(os.path.join(machinery, p), "k8s.io/apimachinery/" + p) for p in MACHINERY_PACKAGES]
    print(f"# Kubernetes protobuf schema for the JSON mapping, generated by tools/gen_schema.py")
    print(f"# from k8s.io/api {version} and k8s.io/apimachinery {version} (Apache License 2.0,")
    print(f"# Copyright The Kubernetes Authors). Do not edit; regenerate.")
    meta_fields, meta_kinds = parse_go(os.path.join(machinery, "pkg/apis/meta/v1"))[:2]
    for directory, import_path in dirs:
        package, messages = parse_proto(os.path.join(directory, "generated.proto"))
        go_fields, kinds, slices, aliases = parse_go(directory)
        # `type List metav1.List`: the named type has the fields (and kind-ness) of its target.
        for alias, target in aliases.items():
            for (struct, pname), flags in meta_fields.items():
                if struct == target:
                    go_fields[(alias, pname)] = flags
            if target in meta_kinds:
                kinds.add(alias)
        if import_path.startswith("k8s.io/api/") or import_path.endswith("meta/v1"):
            register = open(os.path.join(directory, "register.go")).read()
            group = re.search(r'GroupName\s*=\s*"([^"]*)"', register).group(1)
            print(f"G {group or '-'} {os.path.basename(directory)} {package}")
        local = {name for name, _ in messages}
        for name, fields in messages:
            full = package + "." + name
            flags = ("K" if name in kinds else "") + ("S" if name in slices else "")
            print(f"M {full} {flags or '-'}")
            for number, fname, label, ftype in fields:
                if label == "m":
                    ftype = ",".join(qualify(t, package, local) for t in ftype.split(","))
                else:
                    ftype = qualify(ftype, package, local)
                go = go_fields.get((name, fname))
                if go is None:
                    if full in CUSTOM or name in slices:
                        go = "-"
                    else:
                        sys.exit(f"{full}.{fname}: no Go struct field with this protobuf name")
                print(f"F {number} {fname} {label} {ftype} {go}")


if __name__ == "__main__":
    main()
