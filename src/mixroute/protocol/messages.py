"""Typed wire messages, defined once. Encoded with msgpack (`encode` / `decode_*`).

Versioning: every top-level message carries `v` (schema version). A receiver rejects a
major version it does not know with a clear error instead of guessing at fields.
"""

from __future__ import annotations

from typing import Literal

import msgspec

WIRE_VERSION = 1

FinishReason = Literal["stop", "length", "abort", "error", "content_filter"]
WorkerType = Literal["prefill", "decode", "both"]
KvTransport = Literal["host", "direct"]
"""How KV blocks move from a prefill to a decode worker: streamed over the request plane
(`host`), or copied by the decode worker straight out of the prefill's shared KV cache
(`direct`, same host only)."""


class Versioned(msgspec.Struct, kw_only=True):
    """Base of every top-level message: `v` is its schema version. A message from a newer
    major version fails to decode with a msgspec.ValidationError that names both versions
    (msgspec runs `__post_init__` after decoding), instead of being read as if it were ours."""

    v: int = WIRE_VERSION

    def __post_init__(self) -> None:
        if self.v > WIRE_VERSION:
            raise ValueError(
                f"{type(self).__name__} has wire version {self.v}; this mixroute speaks {WIRE_VERSION}: "
                "upgrade the older component"
            )


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    """0 means no top-k cut."""
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0


class KvTransferHandle(msgspec.Struct, frozen=True, kw_only=True):
    """What a prefill worker returns so a decode worker can pull the prompt's KV blocks."""

    source_address: str
    """Request-plane address of the prefill worker holding the blocks."""
    worker_id: int
    transfer_id: str
    block_ids: tuple[int, ...]
    num_tokens: int
    """Prompt tokens whose KV the blocks hold."""
    block_hashes: tuple[int, ...] = ()
    """Sequence hashes of the full blocks, so the importer can register them in its prefix cache."""
    first_token_id: int | None = None
    """The token sampled by the prefill step (the decode worker emits it first)."""
    host_id: str = ""
    """The prefill worker's host (`mixroute.engine.kv_transfer.host.host_id`); a decode worker
    on the same host may copy the blocks directly instead of streaming them. Empty: unknown."""


class GenerateRequest(Versioned, kw_only=True):
    request_id: str
    token_ids: list[int]
    sampling: SamplingParams = SamplingParams()
    cache_salt: str | None = None
    prefill_only: bool = False
    """Disaggregated prefill: compute the prompt, sample one token, hold the blocks for export."""
    kv_transfer: KvTransferHandle | None = None
    """Disaggregated decode: import these blocks instead of computing the prompt."""


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache (or imported from a prefill worker)."""
    imported_tokens: int = 0


class GenerateFrame(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One frame of a generate response stream; the last one has `finish_reason` set."""

    token_ids: list[int] = []
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    kv_transfer: KvTransferHandle | None = None
    error: str | None = None
    """Set on a final frame that failed: a message safe to show a client (no addresses,
    exception types or library text; those are logged where they happen)."""
    error_code: str | None = None
    """What kind of failure `error` is, one of the `ERROR_*` values below; a receiver
    treats an unknown or missing code as `ERROR_INTERNAL`."""


ERROR_BAD_REQUEST = "bad_request"
"""The request itself is invalid (a client error)."""
ERROR_CONTEXT_LENGTH = "context_length_exceeded"
"""Prompt + max_tokens do not fit the model's context (a client error)."""
ERROR_OVERLOADED = "overloaded"
"""The worker cannot take the request now; retrying later may succeed."""
ERROR_INTERNAL = "internal"
"""The worker failed; nothing about the request was wrong."""


class KvExportRequest(Versioned, kw_only=True):
    """Decode worker -> prefill worker: send me the blocks behind this handle (then free them)."""

    transfer_id: str
    transport: KvTransport = "host"
    """`host`: stream the blocks (header + one chunk per layer), then free them. `direct`: answer
    with a header alone naming the held block ids; the blocks stay lent to the caller (who
    copies them out of the shared KV cache) until `kv_release` or the hold timeout."""


class KvReleaseRequest(Versioned, kw_only=True):
    """Decode worker -> prefill worker: done with the blocks lent by a `direct` export."""

    transfer_id: str


class KvShareRequest(Versioned, kw_only=True):
    """Decode worker -> prefill worker: share your KV cache with me (same host only)."""

    host_id: str
    """The caller's host; the prefill refuses a caller on another host."""


class CudaIpcHandle(msgspec.Struct, kw_only=True):
    """What `torch.multiprocessing.reductions.rebuild_cuda_tensor` needs to map a CUDA
    allocation of another process (cudaIpcOpenMemHandle), plus the device's UUID so the
    receiver finds the same GPU whatever its CUDA_VISIBLE_DEVICES numbering."""

    device_uuid: str
    storage_handle: bytes
    storage_size_bytes: int
    storage_offset_bytes: int
    ref_counter_handle: bytes
    ref_counter_offset: int
    event_handle: bytes | None = None
    event_sync_required: bool = False


class ShmHandle(msgspec.Struct, kw_only=True):
    """A CPU tensor's storage in named shared memory (torch's file_system sharing)."""

    manager_handle: bytes
    storage_handle: bytes
    storage_size_bytes: int


class KvShareInfo(Versioned, kw_only=True):
    """The prefill worker's whole KV cache, one tensor of shape
    [num_layers, 2 (K, V), num_blocks, block_size, num_kv_heads, head_dim], as a handle that
    a process on the same host maps without copying."""

    share_id: str
    """Changes when the engine behind the address changes (a cached mapping is then stale)."""
    host_id: str
    device: str
    """"cpu" or "cuda"."""
    shape: list[int]
    dtype: str
    cuda: CudaIpcHandle | None = None
    shm: ShmHandle | None = None


# ---- KV events (engine block pool -> event plane -> frontend indexer) ----


class StoredBlock(msgspec.Struct, frozen=True, array_like=True):
    block_hash: int
    """Sequence hash (includes the whole prefix)."""
    tokens_hash: int
    """Local hash of this block's tokens alone."""


class KvStored(msgspec.Struct, tag="stored", kw_only=True):
    parent_hash: int | None
    """Sequence hash of the block before the first stored one, None at the root."""
    blocks: list[StoredBlock]


class KvRemoved(msgspec.Struct, tag="removed", kw_only=True):
    block_hashes: list[int]
    """Sequence hashes."""


class KvCleared(msgspec.Struct, tag="cleared", kw_only=True):
    pass


KvEventData = KvStored | KvRemoved | KvCleared


class KvEvent(Versioned, kw_only=True):
    worker_id: int
    event_id: int
    """Monotonic per worker; a gap means the receiver missed events and must ask for a dump."""
    data: KvEventData
    tier: str = "gpu"


class KvEventBatch(msgspec.Struct, kw_only=True):
    worker_id: int
    events: list[KvEvent]


class LoadMetrics(Versioned, kw_only=True):
    worker_id: int
    num_active_blocks: int
    num_total_blocks: int
    num_running: int
    num_waiting: int
    num_active_prefill_tokens: int = 0
    last_event_id: int = -1
    """Lets a subscriber spot a gap even when no KV event is in flight."""


class InstanceInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The JSON value stored under an instance key in discovery."""

    instance_id: int
    namespace: str
    component: str
    endpoint: str
    address: str
    """Request-plane address, e.g. tcp://127.0.0.1:5555."""
    model: str = ""
    worker_type: WorkerType = "both"
    block_size: int = 16
    http_address: str | None = None
    model_path: str = ""
    """Where the frontend loads the model's tokenizer and chat template from."""
    max_model_len: int = 0
    """Prompt + completion tokens the engine takes; 0: unknown (the frontend reads config.json)."""
    engine: str = ""
    """torch | mocker."""
    host_id: str = ""
    """Machine identity: prefill and decode on one host may move KV directly."""
    kv_transport: str = ""
    """direct | host: how this worker lends KV to a decode worker."""
    extra: dict[str, str] = {}
    """Anything else a deployment wants to advertise (not read by mixroute)."""


_msgpack_encoder = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _msgpack_encoder.encode(msg)


def decoder(kind: type) -> msgspec.msgpack.Decoder:
    """A reusable decoder for one message type (raises msgspec.ValidationError on bad input)."""
    return msgspec.msgpack.Decoder(kind)


def encode_json(msg: msgspec.Struct) -> bytes:
    return msgspec.json.encode(msg)


def decode_json(data: bytes, kind: type):  # type: ignore[no-untyped-def]
    return msgspec.json.decode(data, type=kind)


# ---- KV transfer payload (prefill worker -> decode worker, over the request plane) ----


class KvExportHeader(Versioned, kw_only=True):
    """First frame of a KV export stream; one `KvLayerChunk` per layer follows."""

    transfer_id: str
    token_ids: list[int]
    """The prompt tokens whose KV is exported (the decode worker checks they match its request)."""
    num_tokens: int
    block_size: int
    num_blocks: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    """torch dtype name, e.g. "float32", "bfloat16"."""
    block_hashes: list[int] = []
    first_token_id: int | None = None
    transport: KvTransport = "host"
    """`direct`: no layer chunks follow; `block_ids` name the lent blocks in the shared cache."""
    block_ids: list[int] = []
    share_id: str = ""
    """For `direct`: the `KvShareInfo.share_id` the block ids refer to."""


class KvLayerChunk(msgspec.Struct, kw_only=True):
    layer: int
    data: bytes
    """K and V of this layer's exported blocks, contiguous, shape
    [2, num_blocks, block_size, num_kv_heads, head_dim] in `dtype`."""
