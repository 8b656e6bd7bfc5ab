"""A small kustomize renderer for the subset deploy/kubernetes uses, for offline CI.

Why: no kustomize binary is installable from the registries CI may use
(Debian 12 has no kustomize package; PyPI's "kustomize" is an unrelated library
and there is no "kustomize-bin"), and `kubectl kustomize` is not a Debian
package. When a kubectl is on PATH anyway, tests/deploy compare this renderer's
output with `kubectl kustomize` object for object.

Supported (kustomize v5 semantics, stricter where kustomize is silent):
- ``resources`` (YAML files below the root; directories holding a Kustomization),
- ``components`` (directories holding a Component),
- ``namespace``,
- ``configMapGenerator`` (``files``, ``literals``, ``behavior`` create/replace/
  merge) with kustomize's content-hash name suffix and the name references in
  pod templates updated,
- ``patches`` (strategic merge or JSON 6902; inline ``patch`` or ``path``;
  ``target`` by group/version/kind/name/namespace),
- ``images`` (``name``, ``newName``, ``newTag``, ``digest``).
Anything else is an error, as is a patch that matches nothing.

Order of work per kustomization (as kustomize's accumulateTarget): resources,
then components (each transforming everything accumulated so far), then its
own generators, then patches, namespace, images. Hash suffixes and the
references to them are settled once, at the end of the top-level build.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_FIELDS = {"apiVersion", "kind", "resources", "components", "namespace", "configMapGenerator",
           "patches", "images"}
# Kinds the namespace transformer leaves alone (the ones a deploy could hold).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
# kustomize's "legacy" output order; kinds not listed go between, by name.
_ORDER_FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
                "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
                "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange",
                "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment",
                "StatefulSet", "CronJob", "PodDisruptionBudget"]
_ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
_WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}
_GENERATED = "__kustomize_lite_needs_hash__"


class KustomizeError(ValueError):
    """The kustomization is invalid or uses something outside the subset."""


@dataclass
class _Acc:
    resources: list[dict[str, Any]] = field(default_factory=list)


def build(root: str | Path) -> list[dict[str, Any]]:
    """Render the kustomization in ``root`` like ``kustomize build root``."""
    acc = _Acc()
    _accumulate(Path(root).resolve(), acc, kind="Kustomization", visited=())
    _settle_hashes(acc.resources)
    return sorted(acc.resources, key=_order_key)


def dump(resources: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(resources, sort_keys=True)


# ------------------------------------------------------------------ accumulation


def _read_kustomization(root: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        p = root / name
        if p.is_file():
            doc = yaml.safe_load(p.read_text())
            if not isinstance(doc, dict):
                raise KustomizeError(f"{p}: not a mapping")
            unknown = set(doc) - _FIELDS
            if unknown:
                raise KustomizeError(f"{p}: unsupported fields {sorted(unknown)}")
            return doc
    raise KustomizeError(f"{root}: no kustomization file")


def _file_below(root: Path, rel: str) -> Path:
    """A file referenced by a kustomization: relative, inside its root (kustomize's load restrictor)."""
    if Path(rel).is_absolute():
        raise KustomizeError(f"{root}: {rel!r} must be a relative path")
    p = (root / rel).resolve()
    if root != p and root not in p.parents:
        raise KustomizeError(f"{root}: {rel!r} is not in or below the kustomization root")
    return p


def _accumulate(root: Path, acc: _Acc, kind: str, visited: tuple[Path, ...]) -> None:
    for seen in visited:
        if root == seen or root in seen.parents:
            raise KustomizeError(f"cycle: {root} contains already visited root {seen}")
    visited = (*visited, root)
    k = _read_kustomization(root)
    declared = k.get("kind", "Kustomization")
    if declared != kind:
        raise KustomizeError(f"{root}: expected kind {kind}, found {declared}")

    for rel in k.get("resources") or []:
        if Path(rel).is_absolute() or "://" in rel:
            raise KustomizeError(f"{root}: resource {rel!r} must be a relative path")
        p = (root / rel).resolve()
        if p.is_dir():
            _accumulate(p, acc, "Kustomization", visited)
        elif p.is_file():
            _file_below(root, rel)
            for doc in yaml.safe_load_all(p.read_text()):
                if doc is None:
                    continue
                _check_resource(doc, p)
                _add(acc, doc, p)
        else:
            raise KustomizeError(f"{root}: resource {rel!r} does not exist")

    for rel in k.get("components") or []:
        p = (root / rel).resolve()
        if not p.is_dir():
            raise KustomizeError(f"{root}: component {rel!r} is not a directory")
        _accumulate(p, acc, "Component", visited)

    for gen in k.get("configMapGenerator") or []:
        _generate_configmap(root, gen, acc)

    for entry in k.get("patches") or []:
        _apply_patch_entry(root, entry, acc)

    ns = k.get("namespace")
    if ns:
        for r in acc.resources:
            if r["kind"] not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = ns

    for image in k.get("images") or []:
        _set_image(image, acc.resources)


def _check_resource(doc: Any, where: Path) -> None:
    if not isinstance(doc, dict) or not all(k in doc for k in ("apiVersion", "kind", "metadata")):
        raise KustomizeError(f"{where}: every document needs apiVersion, kind and metadata")
    if not isinstance(doc["metadata"], dict) or not doc["metadata"].get("name"):
        raise KustomizeError(f"{where}: {doc['kind']} without metadata.name")


def _ident(r: dict[str, Any]) -> tuple[str, str, str, str]:
    return (r["apiVersion"], r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])


def _add(acc: _Acc, doc: dict[str, Any], where: Path) -> None:
    if any(_ident(r) == _ident(doc) for r in acc.resources):
        raise KustomizeError(f"{where}: {doc['kind']}/{doc['metadata']['name']} is already defined")
    acc.resources.append(doc)


# ------------------------------------------------------------------ generators


def _generate_configmap(root: Path, gen: dict[str, Any], acc: _Acc) -> None:
    name = gen.get("name")
    if not name:
        raise KustomizeError(f"{root}: configMapGenerator entry without name")
    unknown = set(gen) - {"name", "behavior", "files", "literals"}
    if unknown:
        raise KustomizeError(f"{root}: configMapGenerator {name}: unsupported {sorted(unknown)}")
    data: dict[str, str] = {}
    for spec in gen.get("files") or []:
        key, _, rel = spec.rpartition("=") if "=" in spec else (None, "", spec)
        p = _file_below(root, rel)
        if not p.is_file():
            raise KustomizeError(f"{root}: configMapGenerator {name}: {rel!r} does not exist")
        data[key or p.name] = p.read_text()
    for lit in gen.get("literals") or []:
        key, sep, value = lit.partition("=")
        if not sep:
            raise KustomizeError(f"{root}: configMapGenerator {name}: literal {lit!r} is not k=v")
        data[key] = value
    behavior = gen.get("behavior", "create")
    existing = [r for r in acc.resources
                if r["kind"] == "ConfigMap" and r["metadata"]["name"] == name]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{root}: ConfigMap {name} already exists (use behavior: merge/replace)")
        acc.resources.append({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": name, _GENERATED: True}, "data": data})
    elif behavior in ("replace", "merge"):
        if len(existing) != 1:
            raise KustomizeError(f"{root}: ConfigMap {name}: nothing to {behavior}")
        cm = existing[0]
        cm["data"] = data if behavior == "replace" else {**cm.get("data", {}), **data}
    else:
        raise KustomizeError(f"{root}: configMapGenerator {name}: unknown behavior {behavior!r}")


def _go_json(value: Any) -> str:
    """encoding/json.Marshal output: sorted keys, no spaces, HTML-safe escapes."""
    s = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s


def configmap_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix: sha256 of the encoded ConfigMap, 10 hex chars, vowel-free.

    kustomize v5 means to hash the name too, but looks it up with the path
    "metadata/name" as one key and finds nothing, so the name it hashes is ""
    (checked against kubectl kustomize v5.5).
    """
    digest = hashlib.sha256(
        _go_json({"kind": "ConfigMap", "name": "", "data": data}).encode()).hexdigest()
    return digest[:10].translate(str.maketrans("013ae", "ghkmt"))


def _settle_hashes(resources: list[dict[str, Any]]) -> None:
    renames: dict[str, str] = {}
    for r in resources:
        if r["metadata"].pop(_GENERATED, False):
            old = r["metadata"]["name"]
            new = f"{old}-{configmap_hash(r.get('data', {}))}"
            r["metadata"]["name"] = new
            renames[old] = new
    if not renames:
        return
    for r in resources:
        for pod in _pod_specs(r):
            for vol in pod.get("volumes") or []:
                if "configMap" in vol:
                    _rename(vol["configMap"], renames)
                for src in (vol.get("projected") or {}).get("sources") or []:
                    if "configMap" in src:
                        _rename(src["configMap"], renames)
            for c in _containers(pod):
                for env in c.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                    if ref:
                        _rename(ref, renames)
                for env_from in c.get("envFrom") or []:
                    if "configMapRef" in env_from:
                        _rename(env_from["configMapRef"], renames)


def _rename(ref: dict[str, Any], renames: dict[str, str]) -> None:
    if ref.get("name") in renames:
        ref["name"] = renames[ref["name"]]


def _pod_specs(r: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if r["kind"] == "Pod":
        yield r.setdefault("spec", {})
    elif r["kind"] in _WORKLOADS:
        yield r.setdefault("spec", {}).setdefault("template", {}).setdefault("spec", {})
    elif r["kind"] == "CronJob":
        yield r["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers"):
        yield from pod.get(key) or []


# ------------------------------------------------------------------ patches


def _apply_patch_entry(root: Path, entry: dict[str, Any], acc: _Acc) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise KustomizeError(f"{root}: patch entry: unsupported {sorted(unknown)}")
    if ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{root}: a patch entry needs exactly one of path, patch")
    text = _file_below(root, entry["path"]).read_text() if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):
        if not target:
            raise KustomizeError(f"{root}: a JSON 6902 patch needs a target")
        matches = _select(acc.resources, target)
        apply: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: json6902(r, body)  # noqa: E731
    elif isinstance(body, dict):
        if target is None:
            meta = body.get("metadata") or {}
            target = {"kind": body.get("kind"), "name": meta.get("name")}
            if meta.get("namespace"):
                target["namespace"] = meta["namespace"]
        matches = _select(acc.resources, target)
        patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
        if "metadata" in body:
            patch["metadata"] = {k: v for k, v in body["metadata"].items()
                                 if k not in ("name", "namespace")}
        apply = lambda r: strategic_merge(r, patch)  # noqa: E731
    else:
        raise KustomizeError(f"{root}: a patch must be a mapping or a list of operations")
    if not matches:
        raise KustomizeError(f"{root}: patch target {target} matches nothing")
    for i in matches:
        acc.resources[i] = apply(acc.resources[i])


def _select(resources: list[dict[str, Any]], target: dict[str, Any]) -> list[int]:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise KustomizeError(f"patch target: unsupported selectors {sorted(unknown)}")
    out = []
    for i, r in enumerate(resources):
        group, _, version = r["apiVersion"].rpartition("/")
        have = {"group": group, "version": version, "kind": r["kind"],
                "name": r["metadata"]["name"], "namespace": r["metadata"].get("namespace", "")}
        if all(re.fullmatch(str(want), have[key]) for key, want in target.items()):
            out.append(i)
    return out


def _merge_keys(path: tuple[str, ...], key: str) -> tuple[str, ...] | None:
    """Strategic-merge keys of the list fields the manifests patch (None: replace the list)."""
    if key in ("containers", "initContainers", "ephemeralContainers", "volumes", "env",
               "imagePullSecrets"):
        return ("name",)
    if key == "volumeMounts":
        return ("mountPath",)
    if key == "ports":
        return ("containerPort", "protocol") if "containers" in path or "initContainers" in path \
            else ("port", "protocol")
    return None


def strategic_merge(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch of ``patch`` into a copy of ``target``."""
    if not isinstance(target, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if "$patch" in patch:
        raise KustomizeError(f"{'.'.join(path)}: unsupported $patch {patch['$patch']!r}")
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
            continue
        keys = _merge_keys(path, key)
        if isinstance(value, list) and keys is not None and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, keys, (*path, key))
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, (*path, key))
        else:
            out[key] = copy.deepcopy({k: v for k, v in value.items() if k != "$patch"}
                                     if isinstance(value, dict) else value)
    return out


def _merge_list(current: list[Any], patch: list[Any], keys: tuple[str, ...],
                path: tuple[str, ...]) -> list[Any]:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or not all(k in item for k in keys):
            # kustomize silently drops such entries; refuse instead.
            raise KustomizeError(f"{'.'.join(path)}: patch entry {item!r} lacks merge keys {keys}")
        idx = [i for i, cur in enumerate(out) if all(cur.get(k) == item[k] for k in keys)]
        if item.get("$patch") == "delete":
            if not idx:
                raise KustomizeError(f"{'.'.join(path)}: nothing to delete for {item!r}")
            out = [cur for i, cur in enumerate(out) if i not in idx]
        elif idx:
            out[idx[0]] = strategic_merge(out[idx[0]], item, path)
        else:
            out.append(strategic_merge({}, item, path))
    return out


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for p in parts:
        try:
            doc = doc[int(p)] if isinstance(doc, list) else doc[p]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KustomizeError(f"JSON patch path {path!r} does not exist") from None
    return doc


def json6902(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add/remove/replace/test/copy/move on a copy of ``target``."""
    doc = copy.deepcopy(target)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        parts = _pointer(path)
        parent, last = _walk(doc, parts[:-1], path), parts[-1]
        if kind in ("add", "replace", "copy", "move"):
            if kind in ("copy", "move"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, src, op["from"]))
                if kind == "move":
                    holder = _walk(doc, src[:-1], op["from"])
                    del holder[int(src[-1]) if isinstance(holder, list) else src[-1]]
            else:
                value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                if kind == "replace":
                    _walk(parent, [last], path)
                    parent[int(last)] = value
                else:
                    parent.insert(len(parent) if last == "-" else int(last), value)
            else:
                if kind == "replace" and last not in parent:
                    raise KustomizeError(f"JSON patch replace: {path!r} does not exist")
                parent[last] = value
        elif kind == "remove":
            _walk(parent, [last], path)
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "test":
            if _walk(doc, parts, path) != op.get("value"):
                raise KustomizeError(f"JSON patch test failed at {path!r}")
        else:
            raise KustomizeError(f"JSON patch: unknown op {kind!r}")
    return doc


# ------------------------------------------------------------------ images


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    digest: str | None = None
    name = image
    if "@" in image:
        name, digest = image.split("@", 1)
    tag: str | None = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest


def _set_image(spec: dict[str, Any], resources: list[dict[str, Any]]) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown or "name" not in spec:
        raise KustomizeError(f"images entry {spec!r}: needs name; unsupported {sorted(unknown)}")
    for r in resources:
        for pod in _pod_specs(r):
            for c in _containers(pod):
                name, tag, digest = _split_image(c.get("image", ""))
                if name != spec["name"]:
                    continue
                name = spec.get("newName", name)
                if "digest" in spec:
                    c["image"] = f"{name}@{spec['digest']}"
                    continue
                tag = str(spec["newTag"]) if "newTag" in spec else tag
                c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# ------------------------------------------------------------------ output order


def _order_key(r: dict[str, Any]) -> tuple[int, str, str, str]:
    kind = r["kind"]
    if kind in _ORDER_FIRST:
        rank = _ORDER_FIRST.index(kind)
    elif kind in _ORDER_LAST:
        rank = len(_ORDER_FIRST) + 1 + _ORDER_LAST.index(kind)
    else:
        rank = len(_ORDER_FIRST)
    return (rank, kind, r["metadata"].get("namespace", ""), r["metadata"]["name"])


if __name__ == "__main__":
    sys.stdout.write(dump(build(sys.argv[1])))
