"""Alertmanager's webhook on the gateway (routes/alerts.py), through real HTTP against a node on
a real Mosquitto: a firing alert becomes a `safety/alert` on the node's MQTT and a flag the
red-team persona reviews; repeats are duplicates; resolved is published too; bad bodies are
refused and publish nothing; the rate is bounded."""

from __future__ import annotations

from typing import Any

from gibsey.node.gateway.routes.alerts import FLEET_ALERTS_BURST
from tests.conftest import Collector, CollectorFactory
from tests.events import topic
from tests.gateway_support import AUTH, GatewayNode, gateway_node

__all__ = ["gateway_node"]

WEBHOOK = "/api/alerts/alertmanager"
STARTS = "2026-11-29T23:00:00.000Z"


def _alert(
    status: str = "firing",
    name: str = "NodeDown",
    instance: str = "10.0.0.3:8080",
    fingerprint: str = "a1b2c3d4e5f60718",
    starts: str = STARTS,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {
            "alertname": name,
            "instance": instance,
            "severity": "critical",
            "gallery": "e2e",
            "job": "gibsey",
        },
        "annotations": {
            "summary": f"node {instance} is down",
            "description": "its /metrics has not answered for 1m",
        },
        "startsAt": starts,
        "endsAt": "2026-11-29T23:05:00.000Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def _notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4), with the fields the route does not read."""
    return {
        "receiver": "gibsey-node",
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": list(alerts),
        "groupLabels": {"alertname": "NodeDown"},
        "commonLabels": {"job": "gibsey"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="NodeDown"}',
        "truncatedAlerts": 0,
    }


def _fleet(c: Collector) -> list[dict[str, Any]]:
    return [a["payload"] for a in c.of_kind("safety/alert") if a["actor"] == "alertmanager"]


def _reasons(c: Collector) -> list[str]:
    return [a["payload"]["reason"] for a in c.of_kind("safety/alert")]


async def _alerts(gw: GatewayNode, factory: CollectorFactory) -> Collector:
    return await factory(gw.broker.port, topic(gw.node.node_id, "safety/alert"))


async def _post(gw: GatewayNode, body: dict[str, Any]) -> dict[str, Any]:
    r = await gw.http.post(WEBHOOK, json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_a_firing_alert_becomes_a_safety_alert_and_a_red_team_review(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """Alertmanager posts NodeDown firing: the node publishes one safety/alert `fleet_NodeDown`
    (critical, the instance and the annotations in its detail) acknowledged by the broker, and
    puts it before the red-team persona (a flag in the safety inverter's store), whose review
    comes out as a `red_team_review` safety/alert naming it."""
    gw = gateway_node
    col = await _alerts(gw, collector_factory)
    answer = await _post(gw, _notification(_alert()))
    assert (answer["received"], answer["duplicates"], answer["suppressed"]) == (1, 0, 0)
    assert answer["acked"] is True and answer["reviews"] == 1
    [published] = answer["published"]
    assert published["kind"] == "safety/alert"

    await col.wait_for(lambda c: _fleet(c))
    [alert] = _fleet(col)
    assert (alert["reason"], alert["severity"]) == ("fleet_NodeDown", "critical")
    assert "10.0.0.3:8080" in alert["detail"] and "is down" in alert["detail"]
    assert "a1b2c3d4e5f60718" in alert["detail"]

    agents = gw.node.parts.agents
    assert agents is not None
    [flag] = agents.flags.all()
    assert (flag["label"], flag["event"], flag["verdict"]) == (
        "fleet_NodeDown",
        published["event"],
        None,
    )
    verdict = await agents.review_once(force=True)
    assert verdict in ("SAFE", "UNSAFE", "UNCLEAR")
    reviews = await col.wait_for(
        lambda c: [
            a for a in c.of_kind("safety/alert") if a["payload"]["reason"] == "red_team_review"
        ]
    )
    assert "fleet_NodeDown" in reviews[0]["payload"]["detail"]


async def test_repeats_are_duplicates_and_resolved_is_published(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """Alertmanager re-sends a firing alert every repeat_interval and with every notification
    of its group: the same fingerprint, status and start is published once. Its resolution is
    published (`fleet_NodeDown_resolved`, info), once; the same alert firing again later (a new
    startsAt) is a new episode, published again."""
    gw = gateway_node
    col = await _alerts(gw, collector_factory)
    first = await _post(gw, _notification(_alert()))
    again = await _post(gw, _notification(_alert(), _alert(fingerprint="ffff0000ffff0000")))
    assert len(first["published"]) == 1
    assert (len(again["published"]), again["duplicates"]) == (1, 1)  # only the new one
    resolved = await _post(gw, _notification(_alert("resolved")))
    assert (len(resolved["published"]), resolved["reviews"]) == (1, 0)
    assert (await _post(gw, _notification(_alert("resolved"))))["duplicates"] == 1
    refired = await _post(gw, _notification(_alert(starts="2026-11-30T01:00:00.000Z")))
    assert len(refired["published"]) == 1

    await col.wait_for(lambda c: len(_fleet(c)) == 4)
    assert [(a["reason"], a["severity"]) for a in _fleet(col)] == [
        ("fleet_NodeDown", "critical"),
        ("fleet_NodeDown", "critical"),
        ("fleet_NodeDown_resolved", "info"),
        ("fleet_NodeDown", "critical"),
    ]
    assert "resolved at 2026-11-29T23:05:00" in _fleet(col)[2]["detail"]


async def test_bad_notifications_are_refused_and_publish_nothing(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """Bodies Alertmanager would not send (another payload version, no fingerprint, a status
    that is neither firing nor resolved, a fingerprint that is not hex, no JSON at all) and a
    notification without the write token are refused with an error that says why; none
    publishes a fleet alert (the one valid notification sent last is the only one heard)."""
    gw = gateway_node
    col = await _alerts(gw, collector_factory)
    no_print = _alert()
    del no_print["fingerprint"]
    cases: list[tuple[object, int, str]] = [
        ({**_notification(_alert()), "version": "3"}, 422, "version"),
        (_notification(no_print), 422, "alerts.0.fingerprint"),
        (_notification({**_alert(), "status": "pending"}), 422, "alerts.0.status"),
        (_notification(_alert(fingerprint="NOT-HEX")), 422, "fingerprint"),
        ({"version": "4", "status": "firing"}, 422, "alerts: Field required"),
    ]
    for body, status, words in cases:
        r = await gw.http.post(WEBHOOK, json=body, headers=AUTH)
        assert r.status_code == status and words in r.json()["error"], (body, r.text)
    raw = {**AUTH, "content-type": "application/json"}  # Alertmanager's, with a broken body
    r = await gw.http.post(WEBHOOK, content=b"{not json", headers=raw)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = await gw.http.post(WEBHOOK, json=_notification(_alert()))
    assert r.status_code == 401 and "token" in r.json()["error"]

    await _post(gw, _notification(_alert(name="Sentinel")))
    await col.wait_for(lambda c: _fleet(c))
    assert [a["reason"] for a in _fleet(col)] == ["fleet_Sentinel"]


async def test_a_flood_of_alerts_is_rate_limited_and_said_once(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """A notification with more distinct alerts than the rate allows: the burst is published,
    the rest answered `suppressed` and said in one `fleet_alerts_suppressed` safety/alert; the
    suppressed are not remembered, so a later notification brings them again (still over the
    limit here: the bucket refills at FLEET_ALERTS_PER_MIN)."""
    gw = gateway_node
    col = await _alerts(gw, collector_factory)
    burst = int(FLEET_ALERTS_BURST)
    flood = [
        _alert(instance=f"10.0.1.{i}:8080", fingerprint=f"{i:016x}") for i in range(burst + 10)
    ]
    answer = await _post(gw, _notification(*flood))
    assert (len(answer["published"]), answer["suppressed"]) == (burst, 10)
    await col.wait_for(lambda c: "fleet_alerts_suppressed" in _reasons(c))
    [said] = [
        a for a in col.of_kind("safety/alert") if a["payload"]["reason"].endswith("suppressed")
    ]
    assert said["payload"]["detail"].startswith("10 alerts from Alertmanager")

    again = await _post(gw, _notification(*flood))
    # The published are remembered; none of the suppressed is taken for a repeat (each is
    # suppressed again, or published if the bucket refilled meanwhile: one token each 2 s).
    assert again["duplicates"] == burst
    assert again["suppressed"] + len(again["published"]) == 10


async def test_degraded_agents_defer_the_review_not_the_alert(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """The agents are degraded (heat, memory: `canned` answers, no model): the alert is still
    published at once, and its flag waits for the red team (no review while degraded)."""
    gw = gateway_node
    agents = gw.node.parts.agents
    assert agents is not None
    agents.pressure.mode = "canned"
    col = await _alerts(gw, collector_factory)
    answer = await _post(gw, _notification(_alert(name="DiskRefusingWrites")))
    assert answer["acked"] is True and answer["reviews"] == 1
    await col.wait_for(lambda c: _fleet(c))
    assert _fleet(col)[0]["reason"] == "fleet_DiskRefusingWrites"
    assert await agents.review_once(force=True) is None
    assert [f["verdict"] for f in agents.flags.all()] == [None]
