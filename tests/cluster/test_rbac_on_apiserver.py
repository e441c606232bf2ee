"""Least privilege, proven on the real API server: for both ServiceAccounts, a
SubjectAccessReview for every verb on every resource either component touches (and a few it
must never touch) is allowed exactly when the code calls it (stowplan.testing.rbac), in the
operator's namespace, in another one and cluster-wide. The matrix is printed (``-s``)."""

from __future__ import annotations

import kubernetes
import pytest

from stowplan.testing import rbac

pytestmark = pytest.mark.cluster

NAMESPACED = {"pods", "events", "leases", "inferencemodels", "inferencemodels/status",
              "secrets", "configmaps", "deployments"}  # fmt: skip
NEVER = {("", "secrets"), ("", "configmaps"), ("apps", "deployments"),
         ("rbac.authorization.k8s.io", "clusterroles")}  # fmt: skip


def _allowed(expected: frozenset[rbac.Permission], perm: rbac.Permission) -> bool:
    group, resource, verb, ns = perm
    return (group, resource, verb, None) in expected or (
        ns is not None and (group, resource, verb, ns) in expected
    )


@pytest.mark.parametrize(
    ("sa", "expected"),
    [("stowplan-operator", rbac.OPERATOR), ("stowplan-agent", rbac.AGENT)],
    ids=["operator", "agent"],
)
def test_service_account_can_do_exactly_what_its_code_calls(installed, control_plane, sa, expected):
    client = kubernetes.config.new_client_from_config(str(control_plane.kubeconfig))
    authz = kubernetes.client.AuthorizationV1Api(client)
    resources = {(g, r) for g, r, _, _ in rbac.OPERATOR | rbac.AGENT} | NEVER
    user = f"system:serviceaccount:stowplan-system:{sa}"
    wrong, allowed = [], []
    for group, resource in sorted(resources):
        scopes: list[str | None] = [None]
        if resource in NAMESPACED:
            scopes += [rbac.OPERATOR_NS, "default"]
        name, _, sub = resource.partition("/")
        for ns in scopes:
            for verb in rbac.VERBS:
                review = kubernetes.client.V1SubjectAccessReview(
                    spec=kubernetes.client.V1SubjectAccessReviewSpec(
                        user=user,
                        groups=["system:serviceaccounts", "system:authenticated"],
                        resource_attributes=kubernetes.client.V1ResourceAttributes(
                            group=group, resource=name, subresource=sub or None,
                            verb=verb, namespace=ns,
                        ),
                    )
                )  # fmt: skip
                got = authz.create_subject_access_review(review).status.allowed
                perm = (group, resource, verb, ns)
                if got:
                    allowed.append(perm)
                if bool(got) != _allowed(expected, perm):
                    wrong.append((perm, "allowed" if got else "denied"))
    print(f"\n{sa} may:", *(f"  {v} {g or 'core'}/{r} in {n or 'all'}" for g, r, v, n in allowed),
          sep="\n")  # fmt: skip
    assert not wrong, wrong
