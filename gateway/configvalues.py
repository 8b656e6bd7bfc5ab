"""Typed readers of configuration values: each error is a ConfigError naming the key.

:mod:`gateway.config` reads the file with them; they know nothing of its keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, cast


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the problem."""


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def url_host(url: str) -> str:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def split_host_port(value: str, key: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: {value!r} is not host:port")
    host, _, port_s = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} has no valid port") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range 1-65535")
    return host, port


def cidr(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: {value!r} is not a valid CIDR")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            raise ConfigError(f"{key}: {value!r} has host bits set") from None
        raise ConfigError(f"{key}: {value!r} is not a valid CIDR") from None
    return str(net)


def cidr_list(value: object, key: str, *, required: bool = False) -> tuple[str, ...]:
    if value is None:
        value = []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of CIDRs, got {type(value).__name__}")
    if required and not value:
        raise ConfigError(f"{key}: at least one CIDR is required")
    return tuple(cidr(v, f"{key}[{i}]") for i, v in enumerate(value))


def integer(value: object, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not an integer")
    try:
        n = int(cast(Any, value))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not an integer") from None
    if isinstance(value, float) and value != n:
        raise ConfigError(f"{key}: {value!r} is not an integer")
    if not lo <= n <= hi:
        raise ConfigError(f"{key}: {n} is out of range {lo}-{hi}")
    return n


def number(value: object, key: str, lo: float, hi: float) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a number")
    try:
        x = float(cast(Any, value))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a number") from None
    if not lo <= x <= hi:
        raise ConfigError(f"{key}: {x} is out of range {lo}-{hi}")
    return x


def boolean(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    raise ConfigError(f"{key}: {value!r} is not true or false")


def string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def section(raw: Mapping[str, Any], key: str, known: set[str]) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    for k in value:
        if k not in known:
            raise ConfigError(f"{key}.{k}: unknown key")
    return dict(value)


class DuplicateKey(ValueError):
    pass


def unique_keys_loader() -> Any:
    """A SafeLoader that refuses a key given twice in one mapping: YAML's
    last-one-wins would silently drop the first (two ``cluster_id`` lines)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[object] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise DuplicateKey(f"{key}: given twice (line {line}); each key may appear once")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader
