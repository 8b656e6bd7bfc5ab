"""The ``dns:`` config section: names the cluster uses and where the gateway answers.

Stdlib only (the CLI imports gateway.config at start). Problems raise
:class:`DnsConfigError` naming the key; ``gateway.config`` re-raises it as its
``ConfigError``, so the daemon stops naming the key like for every other one.

```yaml
dns:
  cluster_domain: cluster.local   # the cluster's own DNS domain (default)
  zone: clusterset.local          # the zone this gateway answers for (default)
  listen: 0.0.0.0:53              # where it answers, UDP and TCP; "" disables
```

Environment overrides (non-empty values only, as for every other key):
``CROSSWIRE_DNS_CLUSTER_DOMAIN``, ``CROSSWIRE_DNS_ZONE``, ``CROSSWIRE_DNS_LISTEN``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KEYS = ("cluster_domain", "zone", "listen")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DnsConfigError(ValueError):
    """Invalid ``dns:`` section; the message names the key and the problem."""


@dataclass(frozen=True)
class DnsConfig:
    cluster_domain: str = "cluster.local"
    zone: str = "clusterset.local"
    listen: str | None = "0.0.0.0:53"  # None: no DNS listener

    @property
    def listen_host_port(self) -> tuple[str, int] | None:
        return None if self.listen is None else split_listen(self.listen, "dns.listen")


def domain(value: object, key: str) -> str:
    """A DNS domain name: lowercase labels of letters, digits and '-'; a final dot is dropped."""
    if not isinstance(value, str) or not value.strip(". "):
        raise DnsConfigError(f"{key}: expected a domain name like cluster.local, got {value!r}")
    name = value.strip().lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise DnsConfigError(f"{key}: {value!r} is not a valid domain name "
                             "(labels of a-z, 0-9 and '-', 1-63 chars each)")
    return name


def split_listen(value: str, key: str) -> tuple[str, int]:
    """``IP:port`` (IPv6 in brackets) -> (ip, port)."""
    host, sep, port_s = value.rpartition(":")
    if not sep:
        raise DnsConfigError(f"{key}: {value!r} is not IP:port (\"\" disables)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DnsConfigError(f"{key}: {host!r} is not an IP address (IPv6 in brackets)") from None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise DnsConfigError(f"{key}: {port_s!r} is not a port 1-65535")
    return host, int(port_s)


def parse(raw: object, env: Mapping[str, str] | None = None) -> DnsConfig:
    """The ``dns:`` value of the config file (None when absent), plus env overrides."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DnsConfigError(f"dns: expected a mapping, got {type(raw).__name__}")
    section: dict[str, Any] = dict(raw)
    for k in section:
        if k not in KEYS:
            raise DnsConfigError(f"dns.{k}: unknown key")
    for k in KEYS:
        value = (env or {}).get(f"CROSSWIRE_DNS_{k.upper()}", "")
        if value != "":
            section[k] = value
    cluster_domain = domain(section.get("cluster_domain", DnsConfig.cluster_domain), "dns.cluster_domain")
    zone = domain(section.get("zone", DnsConfig.zone), "dns.zone")
    if zone == cluster_domain:
        # Imported names would shadow (or be shadowed by) the cluster's own Services.
        raise DnsConfigError(f"dns.zone: {zone!r} is dns.cluster_domain; the zone must be another domain")
    listen = section.get("listen", DnsConfig.listen)
    if listen is None or listen == "":
        listen = None
    elif not isinstance(listen, str):
        raise DnsConfigError(f"dns.listen: expected IP:port or \"\", got {listen!r}")
    else:
        split_listen(listen, "dns.listen")
    return DnsConfig(cluster_domain=cluster_domain, zone=zone, listen=listen)
