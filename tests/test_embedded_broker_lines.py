"""What the embedded Mosquitto says at its start, in the node's log (node/spine/broker.py).

Tried (an outside tester, reading `gibsey up`'s output): two WARNING lines at every start, each
with Mosquitto's text twice ("the embedded Mosquitto says 'Note: It is recommended to replace
message_size_limit ...': Note: It is recommended ..."), the first about the configuration the
node itself writes. Must hold: the note on the node's own configuration is no warning; any
other line is said with its text once.

Real parts: the Mosquitto binary, started as the node starts it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from gibsey.node.spine.broker import OWN_CONFIG_NOTE, MosquittoChild
from tests.brokers import free_port


async def test_the_brokers_start_says_each_line_once_and_not_our_own_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    binary = shutil.which("mosquitto")
    assert binary is not None
    caplog.set_level(logging.DEBUG, logger="gibsey")
    child = MosquittoChild(binary, "127.0.0.1", free_port(), tmp_path, in_ram=False)
    await child.start()
    await child.stop()
    lines = [r for r in caplog.records if "the embedded Mosquitto says" in r.getMessage()]
    noted = [r for r in lines if OWN_CONFIG_NOTE in r.getMessage()]
    assert noted and all(r.levelno == logging.DEBUG for r in noted)  # Mosquitto 2 says it
    assert child.last_words  # what it said: each of its lines, in a message once at most
    for r in lines:
        for words in child.last_words:
            assert r.getMessage().count(words) <= 1, r.getMessage()
