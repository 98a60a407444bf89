"""Real MQTT brokers for tests: Mosquitto as a subprocess on a free loopback port.

The broker process itself is the harness's (gibsey.harness.mosquitto, the one a rehearsal's
nodes run on); re-exported here, where the tests have always found it (the benches import it
from the harness: a product command never imports the test suite)."""

from __future__ import annotations

from gibsey.harness.mosquitto import Mosquitto as Mosquitto
from gibsey.harness.ports import free_port as free_port  # re-exported for the tests
from gibsey.harness.waiting import wait_port as wait_port
