"""The operator's settings come from the environment once, and every client exception becomes
exactly one error of the operator's tree at the one module that talks to the API server."""

from __future__ import annotations

import kubernetes
import pytest
import urllib3
from kubernetes.client.rest import ApiException

from stowplan.operator import errors, kube
from stowplan.operator.settings import ENV, OperatorSettings


def test_defaults_without_environment():
    s = OperatorSettings.from_env({})
    assert s.loop.resync_s == 30 and s.nodes.stale_after_s == 120
    assert s.loop.retry_backoff_s[0] == 1 and s.autoscaling.enabled
    assert s.leader.lease_duration_s == 15 and s.api.request_timeout_s == 10


def test_every_field_has_a_variable_and_the_environment_sets_it():
    fields = {
        (group, name)
        for group, info in OperatorSettings.model_fields.items()
        for name in info.annotation.model_fields  # type: ignore[union-attr]
    }
    assert fields == set(ENV)
    s = OperatorSettings.from_env(
        {
            "STOWPLAN_RESYNC_S": "2",
            "STOWPLAN_RETRY_BACKOFF_S": "0.5, 1,3",
            "STOWPLAN_AUTOSCALING": "false",
            "STOWPLAN_NODE_STALE_AFTER_S": "10",
            "POD_NAME": "op-0",
            "STOWPLAN_SOLVER_TIME_LIMIT_S": "",  # empty: default
        }
    )
    assert s.loop.resync_s == 2 and s.loop.retry_backoff_s == (0.5, 1, 3)
    assert not s.autoscaling.enabled and s.nodes.stale_after_s == 10
    assert s.leader.identity == "op-0" and s.placement.solver_time_limit_s == 0


def test_an_invalid_value_names_its_variable():
    with pytest.raises(ValueError, match="STOWPLAN_LEASE_RENEW_S"):
        OperatorSettings.from_env({"STOWPLAN_LEASE_RENEW_S": "soon"})
    with pytest.raises(ValueError, match="STOWPLAN_RETRY_BACKOFF_S"):
        OperatorSettings.from_env({"STOWPLAN_RETRY_BACKOFF_S": "-1"})


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, errors.NotFound),
        (410, errors.NotFound),
        (409, errors.Conflict),
        (403, errors.Forbidden),
        (401, errors.Forbidden),
        (422, errors.Invalid),
        (400, errors.Invalid),
        (429, errors.ApiUnavailable),
        (500, errors.ApiUnavailable),
        (503, errors.ApiUnavailable),
    ],
)
async def test_api_exceptions_are_mapped_once(status, kind):
    cluster = kube.KubeCluster(kubernetes.client.ApiClient(), request_timeout_s=3)

    def call(**kwargs):
        assert kwargs["_request_timeout"] == (3, 3)  # every request has a timeout
        raise ApiException(status=status, reason="x")

    with pytest.raises(kind) as info:
        await cluster._call(call)
    assert info.value.status == status and isinstance(info.value, errors.OperatorError)


@pytest.mark.parametrize(
    "exc",
    [
        urllib3.exceptions.MaxRetryError(None, "/", "refused"),  # type: ignore[arg-type]
        urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"),  # type: ignore[arg-type]
        ConnectionResetError("reset"),
        TimeoutError(),
    ],
)
async def test_transport_failures_are_unavailable(exc):
    cluster = kube.KubeCluster(kubernetes.client.ApiClient(), request_timeout_s=3)

    def call(**_):
        raise exc

    with pytest.raises(errors.ApiUnavailable):
        await cluster._call(call)
