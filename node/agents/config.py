"""The `[agent]` section of gibsey.toml (all keys optional).

[agent]
model = "/opt/models/qwen2.5-0.5b-q4_k_m.gguf"  # any GGUF; default: the registry's Gemma 3 270M
threads = 2              # llama.cpp threads
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

from typing import Annotated

from pydantic import Field, field_validator

from gibsey.core.config import ConfigSection, Env

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


class AgentConfig(ConfigSection):
    model: str = ""
    threads: int = 2
    # How long llama.cpp's OpenMP threads spin before sleeping between steps (GOMP_SPINCOUNT).
    # Spinning forever (OpenMP's passive/active extremes) is either 2x slower or starves the
    # daemon on a 2-core Pi; a short spin keeps most of the speed (measured: 37 tok/s passive,
    # 63 at 10,000, 70 at the 300,000 default, through the node) and yields the core soon.
    omp_spincount: int = 10_000
    # Load the model worker and the embedder with the node, not at the first question: the
    # first visitor's answer is faster, and the node holds ~600 MiB more from the start.
    preload: bool = False
    n_ctx: int = 1024
    max_tokens: int = 96
    temperature: float = 0.7
    seed: int = 7
    # Tokens that come faster than this share a write from the worker (worker.py): fewer wake-ups
    # of the daemon, the broker and the clients per token, each still its own agent/emit.
    token_batch: float = 0.05
    first_token_timeout: float = 60.0
    token_timeout: float = 15.0
    load_timeout: float = 120.0
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    memory: bool = True
    memories_in_prompt: int = 3
    memory_max_distance: float = 0.8
    tensor_half_life: float = 3600.0
    tensor_publish_interval: float = 2.0
    requests_per_minute: float = 20.0
    requests_burst: float = 5.0
    rotations_per_second: float = 10.0
    temp_limit_c: float = 80.0
    temp_canned_c: float = 85.0
    mem_available_min: float = 0.10
    mem_available_canned: float = 0.05
    pressure_interval: float = 5.0
    idle_review_after: float = 30.0
    sqlite: str = "auto"
    thermal_glob: str = "/sys/class/thermal/thermal_zone*/temp"
    meminfo: str = "/proc/meminfo"
    blocked: list[str] = Field(default_factory=list)
    # gibsey-node.service sets GIBSEY_AGENT_WORKER to the socket unit's path.
    worker: Annotated[str, Env("GIBSEY_AGENT_WORKER")] = WORKER_SPAWN

    @field_validator("worker")
    @classmethod
    def _worker_is_spawn_or_a_socket(cls, value: str) -> str:
        worker_socket_path(value)
        return value
