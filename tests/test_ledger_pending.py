"""A mint waiting for its group commit is said in the node's status (`ledger_pending`): a
gallery has not converged while any node holds one (gibsey rehearse waits for 0 before it calls
the room converged; a CI run compared the nodes' feeds after a stop and found one entry more on
the node whose last mint was committed after the check)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gibsey.harness.waiting import wait_until
from tests.gateway_support import AUTH, gateway_config, running_gateway


async def test_a_mint_waiting_for_its_group_commit_is_pending_until_it_is_stored(
    tmp_path: Path,
) -> None:
    config = gateway_config()
    config.node.ledger_group_wait_s = 60.0  # the group's commit is far off
    async with running_gateway(tmp_path, config) as gw:
        ledger = gw.node.parts.ledger
        assert ledger is not None
        before = ledger.store.count()
        r = await gw.http.post(
            "/api/glyph/rotate?wait=true", json={"symbol": 1, "rotation": 0}, headers=AUTH
        )
        assert r.status_code == 202, r.text
        assert r.json()["ritual"]["effects"] == 2  # Read: performed, and it mints a token
        await asyncio.to_thread(
            wait_until,
            lambda: gw.node.status().ledger_pending == 1,
            10,
            "the mint to be pending",
        )
        status = (await gw.http.get("/api/status")).json()
        assert status["ledger_pending"] == 1
        assert ledger.store.count() == before  # not stored yet: waiting for its group
        ledger.group.max_group = 2
        ledger.group.submit_mint("nudge", 1, "read")  # a full group is committed at once
        await asyncio.to_thread(
            wait_until,
            lambda: gw.node.status().ledger_pending == 0,
            30,
            "the mint to be stored and announced",
        )
        assert ledger.store.count() == before + 2
