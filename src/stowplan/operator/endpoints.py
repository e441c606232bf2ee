"""An address per model: its Service, its EndpointSlice and the drain before a copy goes (pure).

Callers: :mod:`stowplan.operator.fleet`. For every InferenceModel the operator keeps a Service of
the same name in the model's namespace (no selector, port ``SERVICE_PORT``, owned by the
InferenceModel so deleting the model deletes it) and one EndpointSlice, also owned by the model,
that lists the pod IP of every agent holding a Ready replica of it (the IP and port come from
``GPUNode.status.endpoint``). kube-proxy routes the Service's ClusterIP to those addresses.

What joins and what leaves:

- an agent's address joins the slice only once that agent reports a replica of the model
  ``Ready`` (``GPUNode.status.models``) on a live node (not stale, cordoned or deleted), for a
  replica the desired assignments still keep there;
- a copy the pass would remove (scale-down, unload, the old copy of a move) whose agent would
  then hold no Ready replica of the model is *held*: it stays in the node's assignments, so the
  agent keeps serving it, while the slice written this pass no longer lists that agent; it is
  released once the slice listed from the API server no longer lists the address and
  ``drain_s`` has passed since the hold began (kube-proxy has had time to drop the DNAT rule).

So an address leaves the slice before its agent stops serving the model, and a client of the
ClusterIP never lands on an agent that does not hold the model. ``status.url`` is
``http://NAME.NAMESPACE.svc:8000/v2/models/NAME``: the agent serves a model as
``namespace.name`` and answers to the bare ``name`` too while no model of another namespace with
that name shares the agent (then the bare name is a 400 naming both, and
``.../v2/models/NAMESPACE.NAME`` always works). A model whose name is not a valid
Service name (a DNS-1035 label: at most 63 lowercase letters, digits and ``-``, starting with a
letter) gets no Service and no URL. Only IPv4 agent endpoints are listed, and not loopback,
link-local, unspecified or multicast ones (the API server refuses them; an agent started by hand
on 127.0.0.1 serves, but has no place in a slice). No I/O, no clock:
``now_s`` and the start times are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import AddressValueError, IPv4Address
from urllib.parse import urlsplit

from stowplan import api
from stowplan.api import gpunode as gn
from stowplan.operator import inventory

#: the port every model's Service exposes (the agents' OIP port behind it may differ)
SERVICE_PORT = 8000
PORT_NAME = "http"
#: on the Services the operator creates (it lists them by this label)
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "stowplan-operator"
#: on the EndpointSlices (kube-proxy finds a Service's slices by the service-name label)
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGED_BY = "stowplan.io-operator"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

#: (namespace, name) of a model, and so of its Service and EndpointSlice
ModelRef = tuple[str, str]
#: (model as namespace/name, replica, node): one copy being drained
DrainKey = tuple[str, int, str]


@dataclass(frozen=True)
class SliceEndpoint:
    ip: str
    node: str


@dataclass(frozen=True)
class ModelSlice:
    """A model's EndpointSlice as the operator writes it, or as it was listed."""

    port: int
    endpoints: tuple[SliceEndpoint, ...]
    owner_uid: str | None = None


@dataclass(frozen=True)
class Drains:
    #: copies left in their node's assignments while their address drains: (node, assignment)
    keep: list[tuple[str, gn.Assignment]] = field(default_factory=list)
    #: when each drain still in progress began (monotonic seconds), for the next pass
    started_s: dict[DrainKey, float] = field(default_factory=dict)
    #: seconds until the first drain in progress may be released; None: none in progress
    next_release_in_s: float | None = None


def service_name_ok(name: str) -> bool:
    return len(name) <= 63 and _DNS1035.match(name) is not None


def url(namespace: str, name: str) -> str:
    """The model's address through its Service (what ``status.url`` shows)."""
    return f"http://{name}.{namespace}.svc:{SERVICE_PORT}/v2/models/{name}"


def ref(im: api.InferenceModel) -> ModelRef:
    return (im.metadata.namespace or "default", im.metadata.name)


def agent_address(node: api.GPUNode) -> tuple[str, int] | None:
    """(IPv4, port) of the node's agent from ``status.endpoint``; None when it reports none."""
    if node.status is None or not node.status.endpoint:
        return None
    try:
        parts = urlsplit(node.status.endpoint)
        ip = IPv4Address(parts.hostname or "")
        port = parts.port or SERVICE_PORT
    except (AddressValueError, ValueError):
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None  # the API server refuses these in an EndpointSlice (an agent run by hand)
    return str(ip), port


def _ready(nodes: Iterable[api.GPUNode]) -> set[tuple[str, int, str]]:
    """(model, replica, node) of every copy an agent reports Ready."""
    return {
        (m.model, m.replica, n.metadata.name)
        for n in nodes
        if n.status is not None
        for m in n.status.models
        if m.state == "Ready"
    }


def serving(
    nodes: Sequence[api.GPUNode],
    assignments: Mapping[str, Sequence[gn.Assignment]],
    live: set[str],
) -> dict[str, set[str]]:
    """model (namespace/name) -> the live nodes whose agent holds a Ready replica of it that
    ``assignments`` keeps there."""
    ready = _ready(nodes)
    out: dict[str, set[str]] = {}
    for node, kept in assignments.items():
        if node not in live:
            continue
        for a in kept:
            if (a.model, a.replica, node) in ready:
                out.setdefault(a.model, set()).add(node)
    return out


def slices(
    models: Iterable[api.InferenceModel],
    nodes: Sequence[api.GPUNode],
    assignments: Mapping[str, Sequence[gn.Assignment]],
    live: set[str],
) -> dict[ModelRef, ModelSlice]:
    """Every model's desired EndpointSlice (models whose name is no Service name have none).
    The slice's port is the agents' port (the DaemonSet's; an agent on another port is left
    out, since one slice has one port list)."""
    where = serving(nodes, assignments, live)
    by_name = {n.metadata.name: n for n in nodes}
    out = {}
    for im in models:
        namespace, name = ref(im)
        if not service_name_ok(name):
            continue
        addresses = sorted(
            (addr, node)
            for node in where.get(inventory.model_key(im), set())
            if (addr := agent_address(by_name[node])) is not None
        )
        port = addresses[0][0][1] if addresses else SERVICE_PORT
        out[(namespace, name)] = ModelSlice(
            port=port,
            endpoints=tuple(SliceEndpoint(ip, node) for (ip, p), node in addresses if p == port),
            owner_uid=im.metadata.uid,
        )
    return out


def drain(
    nodes: Sequence[api.GPUNode],
    assignments: Mapping[str, Sequence[gn.Assignment]],
    *,
    live: set[str],
    listed: Mapping[ModelRef, ModelSlice],
    want: Mapping[ModelRef, ModelSlice],
    started_s: Mapping[DrainKey, float],
    now_s: float,
    drain_s: float,
) -> Drains:
    """The copies to hold this pass (see the module docstring). ``assignments``: what the pass
    would write (after make before break); ``listed``: the slices as listed this pass;
    ``want``: the slices this pass writes (a model without one, deleted or without a Service,
    has no address to drain)."""
    ready = _ready(nodes)
    after = serving(nodes, assignments, live)
    out = Drains()
    waits = []
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        name = node.metadata.name
        if name not in live:
            continue  # a dead agent serves nothing: its address is already out of the slice
        addr = agent_address(node)
        if addr is None:
            continue  # an agent without an address is in no slice: nothing to drain
        kept = {(a.model, a.replica) for a in assignments.get(name, [])}
        for a in node.spec.assignments:
            if (a.model, a.replica) in kept:
                continue  # kept (or switching GPU on the same agent)
            if (a.model, a.replica, name) not in ready or name in after.get(a.model, set()):
                continue  # it serves nothing, or the agent keeps serving the model anyway
            namespace, _, model_name = a.model.partition("/")
            if (namespace, model_name) not in want:
                continue
            key: DrainKey = (a.model, a.replica, name)
            since = started_s.get(key, now_s)
            still_listed = any(
                e.ip == addr[0]
                for e in listed.get((namespace, model_name), ModelSlice(0, ())).endpoints
            )
            if not still_listed and now_s - since >= drain_s:
                continue  # drained: remove it now
            out.keep.append((name, a))
            out.started_s[key] = since
            waits.append(max(0.0, drain_s - (now_s - since)))
    if waits:
        return Drains(out.keep, out.started_s, min(waits))
    return out


def with_held(
    assignments: Mapping[str, list[gn.Assignment]], keep: Sequence[tuple[str, gn.Assignment]]
) -> dict[str, list[gn.Assignment]]:
    """``assignments`` plus the held copies, each node's list sorted as the pass writes it."""
    out = {node: list(a) for node, a in assignments.items()}
    for node, a in keep:
        out.setdefault(node, []).append(a)
    for kept in out.values():
        kept.sort(key=lambda a: (a.model, a.replica))
    return out
