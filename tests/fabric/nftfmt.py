"""Test-side reader of the renderer's nftables JSON: a compact nft-like text per rule
and a tiny packet evaluator, written independently of fabric.nat so the unit tests
compare the renderer against literal expectations and simulated packet walks."""

from __future__ import annotations

import ipaddress
from typing import Any


def _val(v: Any) -> str:
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    if isinstance(v, dict) and "elem" in v:
        return _val(v["elem"]["val"])
    if isinstance(v, dict) and "set" in v:  # anonymous set or map
        return "{ " + ", ".join(" : ".join(x) if isinstance(x, list) else str(x) for x in v["set"]) + " }"
    if isinstance(v, dict) and "range" in v:
        return "-".join(v["range"])
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def _left(left: dict[str, Any]) -> str:
    if "payload" in left:
        return f"{left['payload']['protocol']} {left['payload']['field']}"
    if "meta" in left:
        return left["meta"]["key"]
    if "&" in left:
        return f"{_left(left['&'][0])} & {_val(left['&'][1])}"
    if "tcp option" in left:
        return f"tcp option {left['tcp option']['name']} {left['tcp option']['field']}"
    raise AssertionError(f"unknown left {left}")


def expr_text(e: dict[str, Any]) -> str:
    (k, v), = e.items()
    if k == "match":
        op = "" if v["op"] == "==" else v["op"] + " "
        return f"{_left(v['left'])} {op}{_val(v['right'])}"
    if k == "counter":
        return "counter"
    if k in ("accept", "drop"):
        return k
    if k in ("snat", "dnat"):
        pre = " prefix" if v.get("type_flags") == "prefix" else ""
        post = " persistent" if v.get("flags") == "persistent" else ""
        if isinstance(v["addr"], dict) and "map" in v["addr"]:
            return (f"{k} {v['family']}{pre} to {_left(v['addr']['map']['key'])} map "
                    f"{_val(v['addr']['map']['data'])}{post}")
        return f"{k} {v['family']}{pre} to {_val(v['addr'])}{post}"
    if k == "vmap":
        return f"{_left(v['key'])} vmap {v['data']}"
    if k == "mangle":
        return f"{_left(v['key'])} set {v['value']}"
    if k in ("jump", "goto"):
        return f"{k} {v['target']}"
    raise AssertionError(f"unknown expr {e}")


def rule_text(rule: dict[str, Any]) -> str:
    return " ".join(expr_text(e) for e in rule["expr"])


def objects(ruleset: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [c["add"][kind] for c in ruleset["nftables"] if "add" in c and kind in c["add"]]


def chain_rules(ruleset: dict[str, Any], chain: str) -> list[str]:
    return [rule_text(r) for r in objects(ruleset, "rule") if r["chain"] == chain]


def elements(ruleset: dict[str, Any], name: str) -> list[str]:
    """'key : target' per element of map/set ``name``."""
    for kind in ("map", "set"):
        for m in objects(ruleset, kind):
            if m["name"] == name:
                out = []
                for el in m.get("elem", []):
                    if isinstance(el, list):
                        key, verdict = el
                        (vk, vv), = verdict.items() if isinstance(verdict, dict) else [(None, None)]
                        if isinstance(verdict, dict) and ("jump" in verdict or "goto" in verdict):
                            out.append(f"{_val(key)} : {vk} {vv['target']}")
                        else:
                            out.append(f"{_val(key)} : {_val(verdict)}")
                    else:
                        out.append(_val(el))
                return out
    raise AssertionError(f"no map/set {name}")


# ------------------------------------------------------------------ evaluator

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


def _in(addr: Addr, cidr: str) -> bool:
    net = ipaddress.ip_network(cidr)
    return addr.version == net.version and addr in net


def _netmap(addr: Addr, to: str) -> Addr:
    net = ipaddress.ip_network(to)
    host = int(addr) & int(net.hostmask)
    return ipaddress.ip_address(int(net.network_address) | host)


def _eval(ruleset: dict[str, Any], rule: dict[str, Any], env: dict[str, Any]) -> tuple[str, str] | None:
    """None: no match; ("goto", chain) or (verdict, "")."""
    s, d = env["src"], env["dst"]
    proto = "ip" if s.version == 4 else "ip6"
    for e in rule["expr"]:
        (k, v), = e.items()
        if k == "match":
            left, right, op = v["left"], v["right"], v["op"]
            if "meta" in left:
                have = {"iifname": env["iif"], "oifname": env["oif"],
                        "nfproto": "ipv4" if s.version == 4 else "ipv6"}[left["meta"]["key"]]
                hit = have == right
            else:
                p, f = left["payload"]["protocol"], left["payload"]["field"]
                if p != proto:
                    return None  # a payload match of the other family never matches
                a = s if f == "saddr" else d
                if isinstance(right, str) and right.startswith("@"):
                    hit = any(_in(a, x) for x in elements(ruleset, right[1:]))
                elif isinstance(right, dict) and "set" in right:
                    hit = any(_in(a, x) for x in right["set"])
                else:
                    hit = _in(a, _val(right))
            if hit != (op == "=="):
                return None
        elif k == "vmap":
            p, f = v["key"]["payload"]["protocol"], v["key"]["payload"]["field"]
            if p != proto:
                return None
            a = s if f == "saddr" else d
            for el in elements(ruleset, v["data"][1:]):
                key, target = el.split(" : ")
                if _in(a, key):
                    return (target.split()[0], target.split()[1])
            return None
        elif k in ("accept", "drop"):
            return (k, "")
        elif k in ("snat", "dnat"):
            addr = v["addr"]
            if isinstance(addr, dict) and "map" in addr:
                kp = addr["map"]["key"]["payload"]
                if kp["protocol"] != proto:
                    return None
                a = s if kp["field"] == "saddr" else d
                data = addr["map"]["data"]
                pairs = ([tuple(x) for x in data["set"]] if isinstance(data, dict) else
                         [tuple(el.split(" : ")) for el in elements(ruleset, data[1:])])
                hits = [b for k_, b in pairs if _in(a, k_)]
                if not hits:
                    return None  # no element: the rule does not match
                to = hits[0]
            elif isinstance(addr, dict) and "range" in addr:
                to = addr["range"][0]  # the kernel picks one: the walk takes the first
            else:
                to = _val(addr)
            field = "src" if k == "snat" else "dst"
            env[field] = _netmap(env[field], to) if "/" in to else ipaddress.ip_address(to)
            return ("accept", "")
    return None


def walk(ruleset: dict[str, Any], hook: str, iif: str | None, oif: str | None,
         src: str, dst: str) -> tuple[str, str, str]:
    """The first packet of a connection through nat chain ``hook``: (verdict, src, dst)."""
    env: dict[str, Any] = {"src": ipaddress.ip_address(src), "dst": ipaddress.ip_address(dst),
                           "iif": iif, "oif": oif}

    def run(chain: str) -> str | None:
        for r in (r for r in objects(ruleset, "rule") if r["chain"] == chain):
            res = _eval(ruleset, r, env)
            if res is None:
                continue
            if res[0] == "jump":
                verdict = run(res[1])
                if verdict is not None:
                    return verdict
                continue  # fell off the end: back in the calling chain
            if res[0] == "goto":
                return run(res[1])
            return res[0]
        return None

    verdict = run(hook) or "accept"  # base chain policy accept
    return verdict, str(env["src"]), str(env["dst"])
