"""Raw Kubernetes API objects (plain dicts) -> the slim types of ``objects``.

Why this module exists: both sources, the API watcher and the dump reader, receive the
same raw dicts, and nothing past ingest may see them. Converting in one place gives one
set of rules (defaults, lower-cased interned names, canonical IP text, what counts as a
ready endpoint) and one set of error messages, and it keeps the memory of a large cluster
down to the few fields DNS needs. It runs once per object on 100k endpoints, so it is
plain dict access: no copies, no model classes, field paths built only on error.

A malformed object raises ``ConvertError`` naming the offending field as a path such as
``spec.clusterIPs[1]``; the caller decides what to do with the object (skip and warn).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from clusterdns import names
from clusterdns.objects import (
    CLUSTER_FIRST,
    Endpoint,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Port,
    Service,
    ServiceImport,
    ServiceKind,
)

SUPPORTED_KINDS = ("Namespace", "Service", "EndpointSlice", "Pod", "ServiceImport")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# KEP-1645: an EndpointSlice an MCS controller imported names its ServiceImport and the
# id of the cluster its endpoints are in.
IMPORT_NAME_LABEL = "multicluster.kubernetes.io/service-name"
SOURCE_CLUSTER_LABEL = "multicluster.kubernetes.io/source-cluster"
_IMPORT_TYPES = {"": ServiceKind.CLUSTER_IP, "ClusterSetIP": ServiceKind.CLUSTER_IP,
                 "Headless": ServiceKind.HEADLESS}

# Also hands back one shared string object per protocol.
_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "sctp": "sctp"}

# ``dict`` first: isinstance stops there for parsed JSON/YAML, before the slower ABC check.
_MAPPINGS = (dict, Mapping)
_LISTS = (list, tuple)
_EMPTY: Mapping[str, Any] = MappingProxyType({})

_T = TypeVar("_T")


class ConvertError(Exception):
    """A raw object is malformed; ``field`` is the path of the offending value.

    ``str()`` reads ``spec.clusterIPs[1]: "10.0.0.999" is not an IP address``. An empty
    ``field`` means the object itself.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, prefix: str) -> ConvertError:
        """The same error with its field taken relative to ``prefix`` (a list item)."""
        return ConvertError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


def describe(value: Any) -> str:
    """A short rendering of a raw value for messages: JSON for scalars, else its shape."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, _MAPPINGS):
        return "a mapping"
    if isinstance(value, _LISTS):
        return "a list"
    return f"a {type(value).__name__}"


def convert(kind: str, raw: Mapping[str, Any]) -> KubeObject:
    """Convert one raw object of ``kind`` (list items carry no kind of their own).

    Raises ``ConvertError`` for a malformed object, ``ValueError`` for a kind not in
    ``SUPPORTED_KINDS``.
    """
    converter = _CONVERTERS.get(kind)
    if converter is None:
        raise ValueError(f"unsupported kind {kind!r} (supported: {', '.join(SUPPORTED_KINDS)})")
    if not isinstance(raw, _MAPPINGS):
        raise ConvertError("", f"expected a mapping, got {describe(raw)}")
    return converter(raw)


# ----------------------------------------------------------------------- typed access


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    """``value`` as a mapping; absent or null reads as an empty one."""
    if value is None:
        return _EMPTY
    if isinstance(value, _MAPPINGS):
        return value
    raise ConvertError(field, f"expected a mapping, got {describe(value)}")


def _list(value: Any, field: str) -> Sequence[Any]:
    """``value`` as a list; absent or null reads as an empty one."""
    if value is None:
        return ()
    if isinstance(value, _LISTS):
        return value
    raise ConvertError(field, f"expected a list, got {describe(value)}")


def _each(value: Any, field: str, convert_item: Callable[[Any], _T]) -> list[_T]:
    """``convert_item`` applied to every item of a list (absent or null: none).

    Items raise ``ConvertError`` with fields relative to themselves; the ``[index]``
    path is only built when one does.
    """
    out = []
    for index, item in enumerate(_list(value, field)):
        try:
            out.append(convert_item(item))
        except ConvertError as exc:
            raise exc.within(f"{field}[{index}]") from None
    return out


def _item_mapping(item: Any) -> Mapping[str, Any]:
    if isinstance(item, _MAPPINGS):
        return item
    raise ConvertError("", f"expected a mapping, got {describe(item)}")


def _str(value: Any, field: str) -> str:
    """``value`` as a string; absent or null reads as ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise ConvertError(field, f"expected a string, got {describe(value)}")


def _required_str(value: Any, field: str) -> str:
    if value is None:
        raise ConvertError(field, "required")
    if not isinstance(value, str) or not value:
        raise ConvertError(field, f"expected a non-empty string, got {describe(value)}")
    return value


def _ip(value: Any, field: str = "") -> str:
    ip = names.canonical_ip(_required_str(value, field))
    if ip is None:
        raise ConvertError(field, f"{describe(value)} is not an IP address")
    return ip


def _name(meta: Mapping[str, Any]) -> str:
    return sys.intern(_required_str(meta.get("name"), "metadata.name").lower())


def _namespace(meta: Mapping[str, Any]) -> str:
    namespace = _str(meta.get("namespace"), "metadata.namespace")
    return sys.intern(namespace.lower()) if namespace else "default"


def _service_port(item: Any) -> Port:
    port = _port(item)
    if port is None:
        raise ConvertError("port", "required")
    return port


def _slice_ports(value: Any) -> tuple[Port, ...]:
    """A slice port with a null ``port`` (meaning "all ports") is skipped."""
    return tuple(port for port in _each(value, "ports", _port) if port is not None)


def _port(item: Any) -> Port | None:
    """The port, or None when its number is null."""
    item = _item_mapping(item)
    number = item.get("port")
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        raise ConvertError("port", f"{describe(number)} is not a port number (1-65535)")
    text = _str(item.get("protocol"), "protocol")
    protocol = _PROTOCOLS.get(text.lower()) if text else "tcp"
    if protocol is None:
        raise ConvertError("protocol", f"{describe(text)} is not TCP, UDP or SCTP")
    name = _str(item.get("name"), "name")
    key = (name.lower(), protocol, number)
    port = _PORTS.get(key)
    if port is None:
        if len(_PORTS) >= _PORTS_MAX:
            _PORTS.clear()
        port = _PORTS[key] = Port(sys.intern(key[0]) if name else "", protocol, number)
    return port


_PORTS: dict[tuple[str, str, int], Port] = {}
"""One ``Port`` per distinct port: most services share a few (http/tcp/80), and each
object is one more the cyclic collector walks. Emptied when it reaches ``_PORTS_MAX``."""
_PORTS_MAX = 4096


# ------------------------------------------------------------------------ converters


def _namespace_object(raw: Mapping[str, Any]) -> Namespace:
    return Namespace(_name(_mapping(raw.get("metadata"), "metadata")))


def _service(raw: Mapping[str, Any]) -> Service:
    meta = _mapping(raw.get("metadata"), "metadata")
    namespace, name = _namespace(meta), _name(meta)
    spec = _mapping(raw.get("spec"), "spec")
    ports = tuple(_each(spec.get("ports"), "spec.ports", _service_port))
    if _str(spec.get("type"), "spec.type") == "ExternalName":
        target = _external_name(spec.get("externalName"))
        return Service(namespace, name, ServiceKind.EXTERNAL_NAME, external_name=target,
                       ports=ports)
    cluster_ip = _str(spec.get("clusterIP"), "spec.clusterIP")
    if cluster_ip == "None":
        return Service(namespace, name, ServiceKind.HEADLESS, ports=ports)
    listed = spec.get("clusterIPs")
    if listed is not None:
        cluster_ips = tuple(_each(listed, "spec.clusterIPs", _ip))
    elif cluster_ip:
        cluster_ips = (_ip(cluster_ip, "spec.clusterIP"),)
    else:
        cluster_ips = ()
    return Service(namespace, name, ServiceKind.CLUSTER_IP, cluster_ips=cluster_ips, ports=ports)


def _external_name(value: Any) -> str:
    field = "spec.externalName"
    if value is None:
        raise ConvertError(field, "required for an ExternalName service")
    target = names.normalise(_str(value, field))
    if not target:
        problem = "it is empty"
    elif len(target) > 253:
        problem = "longer than 253 characters"
    elif any(not label for label in target.split(".")):
        problem = "empty label"
    elif any(len(label) > 63 for label in target.split(".")):
        problem = "a label is longer than 63 characters"
    else:
        return target
    raise ConvertError(field, f"{describe(value)} is not a valid DNS name ({problem})")


def _endpoint_slice(raw: Mapping[str, Any]) -> EndpointSlice:
    meta = _mapping(raw.get("metadata"), "metadata")
    namespace, name = _namespace(meta), _name(meta)
    labels = _mapping(meta.get("labels"), "metadata.labels")
    imported = labels.get(IMPORT_NAME_LABEL)
    import_name = source = ""
    if imported is None:
        service = _required_str(labels.get(SERVICE_NAME_LABEL),
                                f'metadata.labels["{SERVICE_NAME_LABEL}"]')
    else:  # imported by an MCS controller; a cluster-local Service only if it says so
        service = _str(labels.get(SERVICE_NAME_LABEL), f'metadata.labels["{SERVICE_NAME_LABEL}"]')
        import_name = sys.intern(_required_str(
            imported, f'metadata.labels["{IMPORT_NAME_LABEL}"]').lower())
        source = _cluster_id(labels.get(SOURCE_CLUSTER_LABEL))
    text = _required_str(raw.get("addressType"), "addressType")
    address = _ADDRESS_CONVERTERS.get(text)
    if address is None:
        raise ConvertError("addressType", f"{describe(text)} is not IPv4, IPv6 or FQDN")
    endpoints = _each(raw.get("endpoints"), "endpoints", lambda item: _endpoint(item, address))
    return EndpointSlice(namespace, name, sys.intern(service.lower()), sys.intern(text),
                         tuple(endpoints), _slice_ports(raw.get("ports")), import_name, source)


def _cluster_id(value: Any) -> str:
    """The source cluster of an imported slice: one or more DNS labels (KEP-1645 lets a
    cluster id be a cluster name plus a label naming its registry), lower case; it
    becomes part of the ``<hostname>.<clusterid>.<svc>`` names."""
    field = f'metadata.labels["{SOURCE_CLUSTER_LABEL}"]'
    text = _required_str(value, field).lower()
    if any(not label or len(label) > 63 for label in text.split(".")):
        raise ConvertError(field, f"{describe(value)} is not a cluster id (DNS labels "
                                  "of 1 to 63 characters, separated by dots)")
    return sys.intern(text)


def _endpoint(item: Any, address: Callable[[Any], str]) -> Endpoint:
    item = _item_mapping(item)
    addresses = tuple(_each(item.get("addresses"), "addresses", address))
    ready = _mapping(item.get("conditions"), "conditions").get("ready")
    if ready is not None and not isinstance(ready, bool):
        raise ConvertError("conditions.ready",
                           f"expected true, false or null, got {describe(ready)}")
    hostname = _str(item.get("hostname"), "hostname").lower()
    target = _mapping(item.get("targetRef"), "targetRef")
    pod_name = ""
    if _str(target.get("kind"), "targetRef.kind") == "Pod":
        # Not interned: pod names are unique, the intern table would only add ~40 B each.
        pod_name = _str(target.get("name"), "targetRef.name").lower()
    return Endpoint(addresses, ready is not False, hostname, pod_name)


def _ipv4_address(value: Any) -> str:
    ip = _ip(value)
    if ":" in ip:
        raise ConvertError("", f"{describe(value)} is not an IPv4 address")
    return ip


def _ipv6_address(value: Any) -> str:
    ip = _ip(value)
    if ":" not in ip:
        raise ConvertError("", f"{describe(value)} is not an IPv6 address")
    return ip


def _fqdn_address(value: Any) -> str:
    return _required_str(value, "").lower()


_ADDRESS_CONVERTERS: Mapping[str, Callable[[Any], str]] = {
    "IPv4": _ipv4_address,
    "IPv6": _ipv6_address,
    "FQDN": _fqdn_address,
}


def _pod(raw: Mapping[str, Any]) -> Pod:
    meta = _mapping(raw.get("metadata"), "metadata")
    namespace, name = _namespace(meta), _name(meta)
    status = _mapping(raw.get("status"), "status")
    pod_ips = _list(status.get("podIPs"), "status.podIPs")
    if pod_ips:
        ips = tuple(_each(pod_ips, "status.podIPs", _pod_ip))
    else:
        pod_ip = _str(status.get("podIP"), "status.podIP")
        ips = (_ip(pod_ip, "status.podIP"),) if pod_ip else ()
    phase = sys.intern(_str(status.get("phase"), "status.phase"))
    return Pod(namespace, name, ips, phase, _pod_dns(_mapping(raw.get("spec"), "spec")))


def _pod_ip(item: Any) -> str:
    return _ip(_item_mapping(item).get("ip"), "ip")


def _pod_dns(spec: Mapping[str, Any]) -> str:
    """How the kubelet makes the pod's resolv.conf (``Pod.dns``): ``ClusterFirst`` when it
    is the cluster's search list and ndots, else what differs. A hostNetwork pod with
    ``ClusterFirst`` gets the node's resolv.conf (the kubelet falls back to ``Default``);
    ``dnsConfig`` searches are appended to the cluster's and its options override ndots."""
    host_network = spec.get("hostNetwork")
    if host_network is not None and not isinstance(host_network, bool):
        raise ConvertError("spec.hostNetwork", f"expected true or false, got "
                                               f"{describe(host_network)}")
    if host_network:
        return "hostNetwork"
    policy = _str(spec.get("dnsPolicy"), "spec.dnsPolicy") or CLUSTER_FIRST
    if policy != CLUSTER_FIRST:
        return sys.intern(f"dnsPolicy {policy}")
    dns_config = _mapping(spec.get("dnsConfig"), "spec.dnsConfig")
    if _list(dns_config.get("searches"), "spec.dnsConfig.searches"):
        return "dnsConfig searches"
    options = _each(dns_config.get("options"), "spec.dnsConfig.options",
                    lambda item: _str(_item_mapping(item).get("name"), "name"))
    if "ndots" in options:
        return "dnsConfig ndots"
    return CLUSTER_FIRST


def _service_import(raw: Mapping[str, Any]) -> ServiceImport:
    """A ``multicluster.x-k8s.io/v1alpha1`` ServiceImport. A missing ``spec.type`` is
    ``ClusterSetIP`` (as CoreDNS reads it); any other value than the two the MCS API
    defines is malformed. A headless import keeps no IPs: DNS never uses them."""
    meta = _mapping(raw.get("metadata"), "metadata")
    namespace, name = _namespace(meta), _name(meta)
    spec = _mapping(raw.get("spec"), "spec")
    text = _str(spec.get("type"), "spec.type")
    kind = _IMPORT_TYPES.get(text)
    if kind is None:
        raise ConvertError("spec.type", f"{describe(text)} is not ClusterSetIP or Headless")
    ports = tuple(_each(spec.get("ports"), "spec.ports", _service_port))
    ips = tuple(dict.fromkeys(_each(spec.get("ips"), "spec.ips", _ip)))
    return ServiceImport(namespace, name, kind, ips if kind is ServiceKind.CLUSTER_IP else (),
                         ports)


_CONVERTERS: Mapping[str, Callable[[Mapping[str, Any]], KubeObject]] = {
    "Namespace": _namespace_object,
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "Pod": _pod,
    "ServiceImport": _service_import,
}
