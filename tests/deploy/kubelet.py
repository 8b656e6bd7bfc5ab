"""A kubelet stand-in: turns a rendered container spec into a process in a lab namespace.

What it does as the kubelet would: the command line is the image ENTRYPOINT
(from the Dockerfile) or the container's ``command``, plus its ``args`` (or
CMD); env comes from the spec, with the downward API's ``status.podIP``
filled in; ConfigMap volumes become files; ``securityContext.capabilities``
and ``allowPrivilegeEscalation`` are enforced with setpriv (bounding set =
exactly the added capabilities, no_new_privs), and ``readOnlyRootFilesystem``
with a private mount namespace whose root is remounted read-only except for
the volumes, so a process that secretly needs more than the manifest grants
fails here too. The image's ENV comes from the Dockerfile.

What it changes, and why: no mount namespaces, so every path under a volume's
mountPath (in args, env values and the ConfigMap's YAML) is rewritten to a
temporary directory standing in for the volume; the console scripts resolve
from the project's venv (the image installs the same wheel); and, because
WireGuard UAPI sockets live in one machine-wide directory, the caller may
rename ``wireguard.interface`` in the config.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile
import yaml

VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Image:
    """What the kubelet takes from the image: ENTRYPOINT, CMD, ENV."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]

    @classmethod
    def from_dockerfile(cls, path: Path) -> Image:
        final = dockerfile.parse(path)[-1]
        env: dict[str, str] = {}
        for args in final.all("ENV"):
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
        return cls(dockerfile.exec_form(final.all("ENTRYPOINT")[-1]),
                   dockerfile.exec_form(final.all("CMD")[-1]), env)


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path] = field(default_factory=dict)  # container path -> host path
    container: dict[str, Any] = field(default_factory=dict)

    def in_netns(self, netns: str, cmd: list[str] | None = None) -> list[str]:
        """The container's process (or ``cmd`` as `kubectl exec` runs it) inside ``netns``."""
        argv = self.argv if cmd is None else cmd
        return ["ip", "netns", "exec", netns, *read_only_root(
            self.container, self, env_argv(self.env, confine(self.container, argv)))]


def _rewrite(value: str, mounts: dict[str, Path]) -> str:
    for inside, outside in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == inside or value.startswith(inside.rstrip("/") + "/"):
            return str(outside) + value[len(inside.rstrip("/")):]
    return value


def _rewrite_tree(doc: Any, mounts: dict[str, Path]) -> Any:
    if isinstance(doc, dict):
        return {k: _rewrite_tree(v, mounts) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_rewrite_tree(v, mounts) for v in doc]
    return _rewrite(doc, mounts) if isinstance(doc, str) else doc


def prepare(resources: list[dict[str, Any]], workload: dict[str, Any], container_name: str,
            image: Image, workdir: Path, pod_ip: str,
            config_edit: dict[str, Any] | None = None, init: bool = False) -> Launch:
    """Work out the process for ``container_name`` of ``workload`` (an init container if ``init``)."""
    pod = workload["spec"]["template"]["spec"]
    group = pod.get("initContainers", []) if init else pod["containers"]
    c = next(x for x in group if x["name"] == container_name)

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for m in c.get("volumeMounts", []):
        vol = volumes[m["name"]]
        if "hostPath" in vol:
            mounts[m["mountPath"]] = Path(vol["hostPath"]["path"])
            continue
        if m["mountPath"] == "/var/run/wireguard":
            # UAPI sockets: wg and the implementations know only the real path.
            Path("/var/run/wireguard").mkdir(mode=0o755, exist_ok=True)
            mounts[m["mountPath"]] = Path("/var/run/wireguard")
            continue
        host = workdir / "volumes" / m["name"]
        host.mkdir(parents=True, exist_ok=True, mode=0o755)
        mounts[m["mountPath"]] = host
    for m in c.get("volumeMounts", []):
        vol = volumes[m["name"]]
        if "configMap" not in vol:
            continue
        cm = next(r for r in resources if r["kind"] == "ConfigMap"
                  and r["metadata"]["name"] == vol["configMap"]["name"])
        for key, text in cm.get("data", {}).items():
            doc = yaml.safe_load(text)
            if isinstance(doc, dict):
                doc = _rewrite_tree(doc, mounts)
                for dotted, value in (config_edit or {}).items():
                    node = doc
                    *parents, leaf = dotted.split(".")
                    for p in parents:
                        node = node.setdefault(p, {})
                    node[leaf] = value
                text = yaml.safe_dump(doc, sort_keys=False)
            (mounts[m["mountPath"]] / key).write_text(text)

    argv = list(c.get("command") or image.entrypoint) + list(
        c.get("args") if "args" in c else ([] if "command" in c else image.cmd))
    argv = [_rewrite(a, mounts) for a in argv]
    exe = VENV_BIN / argv[0]
    if exe.exists():
        argv[0] = str(exe)

    env = {"PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", **image.env}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _rewrite(str(e["value"]), mounts)
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[e["name"]] = pod_ip
        else:
            raise AssertionError(f"kubelet stand-in cannot fill env {e}")
    return Launch(argv=argv, env=env, mounts=mounts, container=c)


def confine(container: dict[str, Any], argv: list[str]) -> list[str]:
    """Prefix ``argv`` with setpriv so it runs with exactly the capabilities the spec grants."""
    sc = container.get("securityContext", {})
    if sc.get("privileged"):
        return argv
    caps = sc.get("capabilities", {})
    assert caps.get("drop") == ["ALL"], "stand-in only models drop: [ALL] + add"
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in caps.get("add", []))])
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to confine capabilities"
    prefix = [setpriv, f"--bounding-set={bounding}", "--inh-caps=-all"]
    if sc.get("allowPrivilegeEscalation") is False:
        prefix.append("--no-new-privs")
    return [*prefix, "--", *argv]


def read_only_root(container: dict[str, Any], launch: Launch, argv: list[str]) -> list[str]:
    """Wrap ``argv`` so / is read-only and only the writable volumes are not (if the spec says so).

    Runs as full root before ``confine`` drops capabilities: a private mount
    namespace, each writable volume bind-mounted onto itself (a mount of its
    own, so it stays writable), then / remounted read-only.
    """
    if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        return argv
    ro = {m["mountPath"] for m in container.get("volumeMounts", []) if m.get("readOnly")}
    writable = [str(host) for inside, host in launch.mounts.items()
                if inside not in ro and host.is_dir()]
    script = ('set -e; for p in "$@"; do [ "$p" = -- ] && break; mount --bind "$p" "$p"; done; '
              'while [ "$1" != -- ]; do shift; done; shift; '
              'mount -o remount,bind,ro /; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            *writable, "--", *argv]


def env_argv(env: dict[str, str], argv: list[str]) -> list[str]:
    """``env -i K=V ... argv``: the process sees only the container's environment."""
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


def cleanup_socket(interface: str) -> None:
    for suffix in (".sock", ".name", ".stats", ".standby"):
        p = Path("/var/run/wireguard") / f"{interface}{suffix}"
        if p.exists() or p.is_symlink():
            os.unlink(p)


def wait_http(ns: str, url: str, deadline_s: float, proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Poll ``url`` from inside ``ns`` until 200 (or the deadline); returns the last answer."""
    last = (0, "")
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            break
        r = _sh("curl", "-s", "-m", "2", "-o", "/dev/stdout", "-w", "\n%{http_code}", url, ns=ns)
        body, _, code = r.stdout.rpartition("\n")
        last = (int(code or 0), body)
        if last[0] == 200:
            return last
        time.sleep(0.5)
    return last


def stop(proc: subprocess.Popen[str]) -> str:
    """Stop the container process (SIGTERM, then SIGKILL) and return what it printed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.stdout.read() if proc.stdout else ""


def _sh(*args: str, ns: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          timeout=30, check=check)
