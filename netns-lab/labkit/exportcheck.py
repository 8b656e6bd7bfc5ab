"""Exports in a running lab: is a pod that was not exported refused, and is it counted?

Used by ``lab demo`` and the lab tests: the request goes from a pod of the
consumer through its view of the provider, exactly as an allowed one does;
the provider's gateway drops it (its export policy) and counts it on the
consumer's ``export_denied`` counter (``/api/v1/nat``, and ``/metrics`` as
``crosswire_export_denied_packets_total{peer=...}``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from . import ops
from .lab import Lab, http
from .topology import POD_PORT


def denied(lab: Lab, provider: str, consumer: str) -> int:
    """Packets from ``consumer`` that ``provider``'s export policy dropped (/api/v1/nat)."""
    for p in ops.api(lab, provider, "/api/v1/nat")["peers"]:
        if p.get("cluster_id") == consumer:
            return int((p.get("export_denied") or {}).get("packets", 0))
    return 0


@dataclass(frozen=True)
class Refusal:
    url: str
    answered: bool  # the request got an HTTP answer (it should not)
    before: int  # the consumer's denied counter before the request
    after: int  # ... and after

    @property
    def ok(self) -> bool:
        return not self.answered and self.after > self.before


def try_unexported_pod(lab: Lab, consumer: str, member: str, provider: str, pod: str,
                       timeout: float = 3) -> Refusal:
    target = {p.name: p for p in lab.plan.cluster(provider).pods}[pod]
    url = f"http://{ops.view_of(lab, consumer, provider, target.ip)}:{POD_PORT}/"
    before = denied(lab, provider, consumer)
    code, _ = http(lab.plan.ns_of(consumer, member), url, timeout=timeout)
    after = denied(lab, provider, consumer)
    end = time.monotonic() + 5
    while after <= before and time.monotonic() < end:  # the counter is read through the API
        time.sleep(0.2)
        after = denied(lab, provider, consumer)
    return Refusal(url, code != 0, before, after)


def demo_refusal(lab: Lab, say: Callable[[str], None], target: str) -> tuple[str, bool]:
    """The demo's step: lab's last pod asks gpu pod ``target`` (not exported) and is refused."""
    client = lab.plan.cluster("lab").pods[-1]
    target_pod = {p.name: p for p in lab.plan.cluster("gpu").pods}[target]
    say(f"== gpu exports only what it lists to lab; lab/{client.name} tries gpu pod {target_pod.name} "
        f"({target_pod.ip}), which is not exported")
    r = try_unexported_pod(lab, "lab", client.name, "gpu", target_pod.name)
    say(f"   lab/{client.name}$ curl -m 3 {r.url}  -> {'ANSWERED' if r.answered else 'no answer (dropped)'}")
    say(f"   gpu: lab's export_denied counter {r.before} -> {r.after} packets "
        "(/api/v1/nat; crosswire_export_denied_packets_total{peer=\"lab\"} in /metrics)")
    return (f"lab/{client.name} -> gpu pod {target_pod.name} (not exported): refused and counted "
            f"({r.before} -> {r.after})", r.ok)
