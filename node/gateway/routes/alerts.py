"""Alerts from the gallery's control room: Alertmanager's webhook (MONITORING.md).

`gibsey monitor` writes an alertmanager.yml whose receiver posts here with the node's write
token. Each alert of the notification becomes one `safety/alert` on the node's spine:

* a firing alert: reason `fleet_<alertname>`, its severity label (critical, warning, info), a
  detail from its annotations (summary, description) and its instance; and it is put before the
  red-team persona the way the safety inverter puts a filtered answer there (a flag in the
  agents' FlagStore, which the reviewer reads while the node is idle and answers with a
  `red_team_review` safety/alert). Agents that are busy or degraded only delay that review; the
  safety/alert goes out first, whatever the agents do (and on a node without them).
* a resolved alert: reason `fleet_<alertname>_resolved`, severity info. Published, not only
  logged: whoever watched the firing one on the spine (a dashboard, the events log, another
  node's technician over MQTT) learns on the same stream that it is over, and the log keeps
  both ends of the episode too (every published event is logged with its id).

Alertmanager sends a group's alerts again every `repeat_interval`, and every alert still in the
group with each new notification: an alert is published once per change of its state, keyed by
Alertmanager's fingerprint with its status and start (`startsAt`: an alert that fires again
after it resolved is a new episode, even if the resolved notification never arrived). The
published are rate-limited (FLEET_ALERTS_PER_MIN): those over the limit are answered
`suppressed`, not remembered (a later notification may bring them in), and said in one
`fleet_alerts_suppressed` alert a minute at most. What the node remembers is bounded and lives
with the process: after a restart a still-firing alert is published once more.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from gibsey.core.envelope import SafetyAlert
from gibsey.node.gateway.auth import Token
from gibsey.node.gateway.models import Published
from gibsey.node.gateway.openapi import mutating
from gibsey.node.gateway.state import GatewayState, State
from gibsey.node.spine.inputs import KeyedBuckets

log = logging.getLogger("gibsey.gateway.alerts")

# Alertmanager posts as one actor; events it causes say so.
ACTOR = "alertmanager"
# A gallery has a dozen alert rules and a few nodes: a burst of a whole gallery going down fits,
# a misconfigured Alertmanager (or a stolen token) cannot fill the spine.
FLEET_ALERTS_PER_MIN = 30.0
FLEET_ALERTS_BURST = 30.0
SUPPRESSED_ALERT_INTERVAL_S = 60.0
FINGERPRINTS_KEPT = 4096
REASON_NAME_CHARS = 64

Text = Annotated[str, Field(max_length=4096)]
Labels = Annotated[dict[Annotated[str, Field(max_length=256)], Text], Field(max_length=64)]


class AlertmanagerAlert(BaseModel):
    """One alert of a notification (Alertmanager's webhook, version 4). Fields Alertmanager adds
    in later versions are ignored, not refused: a newer Alertmanager must still be heard."""

    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = {}
    startsAt: Annotated[str, Field(max_length=64)] = ""  # Alertmanager's names, as it sends them
    endsAt: Annotated[str, Field(max_length=64)] = ""
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{1,64}$")]


class AlertmanagerWebhook(BaseModel):
    version: Literal["4"] = Field(description="Alertmanager's webhook payload version")
    status: Literal["firing", "resolved"]
    alerts: Annotated[list[AlertmanagerAlert], Field(max_length=1000)]


class AlertsReceived(BaseModel):
    received: int = Field(description="alerts in the notification")
    published: list[Published] = Field(description="the safety/alert events published")
    acked: bool = Field(description="the broker acknowledged every one published")
    duplicates: int = Field(description="alerts already published in this state (a repeat)")
    suppressed: int = Field(description="alerts over the rate limit: not published")
    reviews: int = Field(description="firing alerts put before the red-team persona")


@dataclass(eq=False)
class AlertInbox:
    """What one gateway remembers of Alertmanager's alerts: the state each was last published in
    (fingerprint -> (status, startsAt), least recently seen forgotten first) and the rate."""

    seen: collections.OrderedDict[str, tuple[str, str]] = field(
        default_factory=collections.OrderedDict
    )
    bucket: KeyedBuckets = field(
        default_factory=lambda: KeyedBuckets(FLEET_ALERTS_PER_MIN / 60.0, FLEET_ALERTS_BURST, 1)
    )
    suppressed: int = 0  # since the last fleet_alerts_suppressed
    said_at: float = -math.inf

    def is_new(self, alert: AlertmanagerAlert) -> bool:
        return self.seen.get(alert.fingerprint) != (alert.status, alert.startsAt)

    def admit(self, alert: AlertmanagerAlert) -> bool:
        """Within the rate: remembered as published (before it is, so a notification that
        arrives meanwhile sees it); over it: counted, not remembered."""
        if not self.bucket.allow("fleet", time.monotonic()):
            self.suppressed += 1
            return False
        self.seen[alert.fingerprint] = (alert.status, alert.startsAt)
        self.seen.move_to_end(alert.fingerprint)
        if len(self.seen) > FINGERPRINTS_KEPT:
            self.seen.popitem(last=False)
        return True

    def say_suppressed(self, gw: GatewayState) -> None:
        now = time.monotonic()
        if not self.suppressed or now - self.said_at < SUPPRESSED_ALERT_INTERVAL_S:
            return
        self.said_at, count, self.suppressed = now, self.suppressed, 0
        log.warning("%d fleet alerts over the rate limit were not published", count)
        gw.node.alert(
            SafetyAlert(
                reason="fleet_alerts_suppressed",
                detail=f"{count} alerts from Alertmanager over {FLEET_ALERTS_PER_MIN:g}/min "
                "were not published (a later notification brings them again)",
            )
        )


_INBOXES: weakref.WeakKeyDictionary[GatewayState, AlertInbox] = weakref.WeakKeyDictionary()


def alert_inbox(gw: State) -> AlertInbox:
    """The inbox of this gateway (one per app: tests run several nodes in one process)."""
    inbox = _INBOXES.get(gw)
    if inbox is None:
        inbox = _INBOXES[gw] = AlertInbox()
    return inbox


Inbox = Annotated[AlertInbox, Depends(alert_inbox)]


def reason_for(alert: AlertmanagerAlert) -> str:
    """`fleet_<alertname>` (`_resolved` when it is over), in letters, digits and `_`."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", alert.labels.get("alertname", ""))[:REASON_NAME_CHARS]
    reason = f"fleet_{name or 'unnamed'}"
    return f"{reason}_resolved" if alert.status == "resolved" else reason


def safety_alert(alert: AlertmanagerAlert) -> SafetyAlert:
    labels, notes = alert.labels, alert.annotations
    name = labels.get("alertname", "unnamed")
    instance = labels.get("instance", "the gallery")
    words = " ".join(n for n in (notes.get("summary", ""), notes.get("description", "")) if n)
    facts = [f"since {alert.startsAt}"] if alert.startsAt else []
    if alert.status == "resolved" and alert.endsAt:
        facts.append(f"resolved at {alert.endsAt}")
    if "gallery" in labels:
        facts.append(f"gallery {labels['gallery']}")
    facts.append(f"Alertmanager fingerprint {alert.fingerprint}")
    detail = f"{name} {alert.status} on {instance}: {words or 'no summary'} ({', '.join(facts)})"
    severity = labels.get("severity", "warning")
    if alert.status == "resolved" or severity not in ("info", "warning", "critical"):
        severity = "info" if alert.status == "resolved" else "warning"
    return SafetyAlert.model_validate(
        {"reason": reason_for(alert), "detail": detail[:16_000], "severity": severity}
    )


async def ask_red_team(gw: GatewayState, alert: SafetyAlert, event_id: str) -> bool:
    """Put a firing alert before the red-team persona, as the safety inverter does a filtered
    answer (a flag it reviews when the node is idle). False when no agents run on this node or
    their store refused it: the safety/alert is out already, and the log says why."""
    agents = gw.node.parts.agents
    if agents is None:
        return False
    try:
        await asyncio.to_thread(
            agents.flags.add,
            ACTOR,
            f"fleet alert {alert.reason}",
            alert.detail,
            alert.reason,
            event_id,
        )
    except Exception as exc:  # a full disk, a closed store: the alert itself went out
        log.warning("fleet alert %s not put before the red team: %s", event_id, exc)
        return False
    return True


router = APIRouter(tags=["alerts"])


@router.post(
    "/api/alerts/alertmanager",
    summary="Alertmanager's webhook: each new alert becomes a safety/alert",
    description="The receiver `gibsey monitor` writes into alertmanager.yml. A firing alert "
    "publishes `fleet_<alertname>` and is put before the red-team persona; a resolved one "
    "publishes `fleet_<alertname>_resolved`. Repeats (same fingerprint, status and start) are "
    f"answered as duplicates; at most {FLEET_ALERTS_PER_MIN:g} alerts a minute are published.",
    **mutating("safety/alert"),
)
async def alertmanager(
    body: AlertmanagerWebhook, _: Token, gw: State, inbox: Inbox
) -> AlertsReceived:
    admitted: list[AlertmanagerAlert] = []
    duplicates = 0
    for alert in body.alerts:  # one at a time: a repeat within one notification is one too
        if not inbox.is_new(alert):
            duplicates += 1
        elif inbox.admit(alert):
            admitted.append(alert)
    inbox.say_suppressed(gw)
    payloads = [safety_alert(a) for a in admitted]
    # Published in order (each publish puts its event on the spine before its first await);
    # the acknowledgements are awaited together.
    sent = await asyncio.gather(*(gw.publish("safety/alert", p, ACTOR) for p in payloads))
    reviews = 0
    for alert, payload, (event, _acked) in zip(admitted, payloads, sent, strict=True):
        if alert.status == "firing":
            reviews += await ask_red_team(gw, payload, event.id)
    return AlertsReceived(
        received=len(body.alerts),
        published=[Published(event=e.id, kind=e.kind, acked=a) for e, a in sent],
        acked=all(a for _e, a in sent),
        duplicates=duplicates,
        suppressed=len(body.alerts) - duplicates - len(admitted),
        reviews=reviews,
    )
