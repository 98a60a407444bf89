"""The `[agent]` section of gibsey.toml (all keys optional).

[agent]
model = "/opt/models/qwen2.5-0.5b-q4_k_m.gguf"  # any GGUF; default: the registry's Gemma 3 270M
threads = 1              # llama.cpp threads; default: every core this process may use but one
                         # (at least 1), so the daemon and the broker always find a core
nice = 10                # the worker's niceness (0-19; raised to this, never lowered)
sched = "batch"          # the worker's scheduling policy: "batch", "idle" or "other"
n_ctx = 1024             # context window of the worker
max_tokens = 96          # cap on one answer (a request may ask for less)
temperature = 0.7
token_batch = 0.05       # s: tokens closer together than this share a write to the daemon
                         # (the first never waits; see worker.py; 0: every token alone)
first_token_timeout = 60 # s: a worker that produces nothing for this long is wedged
token_timeout = 15       # s: ... and between two tokens
ping_interval = 5        # s: idle liveness check of the worker
memory = true            # short-term memory (embeddings + sqlite-vec)
memories_in_prompt = 3
memories_kept = 10000    # short-term memory keeps the latest this many (the oldest forgotten)
tensor_half_life = 3600  # s of node running time
requests_per_minute = 20 # per actor; more are throttled
temp_limit_c = 80        # CPU temperature of the degraded modes (short, then canned at +5)
mem_available_min = 0.10 # fraction of memory available below which agents degrade
sqlite = "auto"          # "auto", "stdlib" or "apsw": how sqlite-vec is loaded
blocked = ["word", ...]  # extra terms for the output filter
worker = "spawn"         # how the daemon gets a model worker: "spawn" (a child process) or
                         # "socket:/run/gibsey/agent-worker.sock" (a systemd socket unit: each
                         # connection is one worker unit; see transport.py). The environment
                         # variable GIBSEY_AGENT_WORKER overrides it (gibsey-node.service sets it).
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gibsey.core.config import DAY_S, ConfigSection, Env, Fraction, Seconds, SecondsOrZero

WORKER_SPAWN = "spawn"
WORKER_SOCKET = "socket:"


def worker_socket_path(value: str) -> str | None:
    """The socket path of an `[agent] worker` value, None for "spawn"; ValueError when invalid."""
    if value == WORKER_SPAWN:
        return None
    path = value.removeprefix(WORKER_SOCKET)
    if value.startswith(WORKER_SOCKET) and path.startswith("/") and len(path.encode()) < 108:
        return path
    raise ValueError(
        f"worker {value!r}: expected {WORKER_SPAWN!r} or "
        f"'{WORKER_SOCKET}/absolute/path/of/the/socket' (at most 107 bytes)"
    )


def default_threads() -> int:
    """llama.cpp's threads: every core this process may run on but one, left for the daemon,
    the broker and the dial (a 2-core machine: 1; a Pi 4 or Zero 2 W: 3)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


class AgentConfig(ConfigSection):
    model: str = ""
    threads: Annotated[int, Field(ge=1, le=256)] = Field(default_factory=default_threads)
    # The dial wins over token generation (AGENTS.md, "Priorities"): the worker raises its own
    # niceness (and, spawned in a session of its own, its autogroup's) to this before llama.cpp
    # starts a thread (every thread inherits it), and runs under this policy: SCHED_BATCH is
    # CPU-bound and its own wake-ups never preempt the daemon, SCHED_IDLE runs only on a core
    # nobody else wants. Under systemd (the socket worker) its unit's CPUWeight= and Nice= apply
    # as well (images/systemd/gibsey-agent-worker@.service).
    nice: Annotated[int, Field(ge=0, le=19)] = 10
    sched: Literal["other", "batch", "idle"] = "batch"
    # How long llama.cpp's OpenMP threads spin before sleeping between steps (GOMP_SPINCOUNT).
    # Spinning forever (OpenMP's passive/active extremes) is either 2x slower or starves the
    # daemon on a 2-core Pi; a short spin keeps most of the speed (measured: 37 tok/s passive,
    # 63 at 10,000, 70 at the 300,000 default, through the node) and yields the core soon.
    omp_spincount: Annotated[int, Field(ge=0, le=2**31 - 1)] = 10_000
    # Load the model worker and the embedder with the node, not at the first question: the
    # first visitor's answer is faster, and the node holds ~600 MiB more from the start.
    preload: bool = False
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 1024
    max_tokens: Annotated[int, Field(ge=1, le=65_536)] = 96  # and at most n_ctx
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.7
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7  # llama.cpp's seeds are 32-bit
    # Tokens that come faster than this share a write from the worker (worker.py): fewer wake-ups
    # of the daemon, the broker and the clients per token, each still its own agent/emit.
    token_batch: Annotated[float, Field(ge=0.0, le=5.0)] = 0.05
    first_token_timeout: Seconds = 60.0
    token_timeout: Seconds = 15.0
    load_timeout: Seconds = 120.0
    ping_interval: Seconds = 5.0
    ping_timeout: Seconds = 5.0
    # MiB of its own (anonymous) memory the worker may gain over what it held once its model
    # loaded; past it, it is started again at its next idle watchdog round (0: never). Measured
    # with the small model: ~100 MiB more over its first 25 answers (buffers first used), then
    # 0.7-1 MiB an answer inside llama.cpp, for as long as it runs (a Pi Zero 2 W has 512 MB).
    worker_memory_growth: Annotated[float, Field(ge=0.0, le=1_048_576.0)] = 256.0
    memory: bool = True
    memories_in_prompt: Annotated[int, Field(ge=0, le=50)] = 3
    # Each answer is one memory (~2 KiB): bounded, or months of questions fill the SD card.
    memories_kept: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    memory_max_distance: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8  # cosine: 0..2
    tensor_half_life: Annotated[float, Field(gt=0.0, le=365 * DAY_S)] = 3600.0
    tensor_publish_interval: Seconds = 2.0
    requests_per_minute: Annotated[float, Field(gt=0.0, le=1_000_000.0)] = 20.0
    requests_burst: Annotated[float, Field(ge=1.0, le=1_000_000.0)] = 5.0  # < 1: never one
    rotations_per_second: Annotated[float, Field(gt=0.0, le=1_000_000.0)] = 10.0
    # CPU temperatures (C) of the degraded modes; canned at least as hot as short.
    temp_limit_c: Annotated[float, Field(ge=0.0, le=150.0)] = 80.0
    temp_canned_c: Annotated[float, Field(ge=0.0, le=150.0)] = 85.0
    # Fractions of memory available; canned at most as much as short.
    mem_available_min: Fraction = 0.10
    mem_available_canned: Fraction = 0.05
    pressure_interval: Seconds = 5.0
    idle_review_after: SecondsOrZero = 30.0
    sqlite: Literal["auto", "stdlib", "apsw"] = "auto"
    thermal_glob: Annotated[str, Field(min_length=1)] = "/sys/class/thermal/thermal_zone*/temp"
    meminfo: Annotated[str, Field(min_length=1)] = "/proc/meminfo"
    blocked: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=10_000)
    ] = Field(default_factory=list)
    # gibsey-node.service sets GIBSEY_AGENT_WORKER to the socket unit's path.
    worker: Annotated[str, Env("GIBSEY_AGENT_WORKER")] = WORKER_SPAWN

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> AgentConfig:
        if self.max_tokens > self.n_ctx:
            raise ValueError(f"max_tokens ({self.max_tokens}) is more than n_ctx ({self.n_ctx})")
        if self.temp_canned_c < self.temp_limit_c:
            raise ValueError(
                f"temp_canned_c ({self.temp_canned_c}) is below temp_limit_c ({self.temp_limit_c})"
            )
        if self.mem_available_canned > self.mem_available_min:
            raise ValueError(
                f"mem_available_canned ({self.mem_available_canned}) is above "
                f"mem_available_min ({self.mem_available_min})"
            )
        return self

    @field_validator("worker")
    @classmethod
    def _worker_is_spawn_or_a_socket(cls, value: str) -> str:
        worker_socket_path(value)
        return value
