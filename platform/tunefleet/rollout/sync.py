"""Weight sync from the trainer to the RolloutPool: full weights in buckets, or a LoRA adapter.

Full weights travel as safetensors blobs ("buckets" of at most `bucket_mb`) described by a
`FullWeights`: engines on the trainer's node map them from shared-memory files (shm.py: no
copy into the object store, no fresh pages); engines elsewhere get them `ray.put` once, as
uint8 arrays the object store hands out as zero-copy, read-only views. `parse_bucket` turns
a blob into tensors without copying; the engine copies them into its weights at commit.

LoRA travels as an `AdapterPayload` (adapter_config.json + adapter_model.safetensors bytes);
engines write it to a directory and serve it as a new `LoRARequest` (no merge).

The pool applies either in two phases (stage on every engine, then commit), see pool.py.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunefleet.rollout.samples import SyncError
from tunefleet.rollout.shm import SHM_DIR, release, slots_for

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
TRAINER_PREFIX = "lm."  # TokenLogpModel keeps the HF model under `.lm`
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# ---------------------------------------------------------------- full weights: trainer side
def hf_names(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the trainer wrapper's `lm.` prefix so names match the HF checkpoint."""
    return {k[len(TRAINER_PREFIX):] if k.startswith(TRAINER_PREFIX) else k: v for k, v in weights.items()}


def pack_buckets(weights: Mapping[str, torch.Tensor], bucket_mb: float,
                 dtype: torch.dtype | None = None, reuse: list[np.ndarray] | None = None,
                 allocate: Callable[[int], np.ndarray] | None = None,
                 nonfinite: list[str] | None = None) -> list[np.ndarray]:
    """Split `weights` (name -> tensor, any shapes) into safetensors blobs of about
    `bucket_mb` MiB each (a tensor larger than that gets a bucket of its own). Aliases of
    one tensor are sent once (tied weights). `dtype`: cast floating tensors on the way (an
    engine serving bf16 needs no fp32 copy). `reuse`: the previous call's blobs, written
    over when their layout matches (fresh memory costs page faults worth several copies).
    `allocate(nbytes)`: where a new blob goes (default: a numpy array; shm.py: a file).
    `nonfinite`: when given, the names of floating tensors holding NaN/inf are appended to
    it (each is checked as written, while its bytes are still in cache).

    Returns uint8 arrays [nbytes] so that `ray.put` stores them out-of-band (zero-copy get).
    """
    reuse = list(reuse or [])
    limit = int(bucket_mb * 2**20)
    buckets, current, size, seen = [], {}, 0, set()
    for name, tensor in weights.items():
        alias = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if alias in seen:  # a tied weight (lm_head = embed_tokens): send it once
            continue
        seen.add(alias)
        nbytes = tensor.numel() * _out_dtype(tensor, dtype).itemsize
        if current and size + nbytes > limit:
            buckets.append(_blob(current, dtype, _nth(reuse, len(buckets)), allocate, nonfinite))
            current, size = {}, 0
        current[name] = tensor.detach()
        size += nbytes
    if current:
        buckets.append(_blob(current, dtype, _nth(reuse, len(buckets)), allocate, nonfinite))
    return buckets


def _nth(items: list, i: int):
    return items[i] if i < len(items) else None


def _out_dtype(t: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and t.is_floating_point() else t.dtype


def _blob(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
          out: np.ndarray | None = None, allocate: Callable[[int], np.ndarray] | None = None,
          nonfinite: list[str] | None = None) -> np.ndarray:
    """Write a safetensors blob straight into one numpy buffer (`out` when it has the same
    layout): one parallel torch copy per tensor, where `safetensors.torch.save` copies twice."""
    # Largest elements first keeps every tensor aligned to its element size (as safetensors does).
    order = sorted(tensors, key=lambda n: -_out_dtype(tensors[n], dtype).itemsize)
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        out_dtype = _out_dtype(t, dtype)
        end = offset + t.numel() * out_dtype.itemsize
        header[name] = {"dtype": ST_NAMES[out_dtype], "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    prefix = np.frombuffer(len(text).to_bytes(8, "little") + text, dtype=np.uint8)
    base = len(prefix)
    if out is None or out.size != base + offset or not np.array_equal(out[:base], prefix):
        out = allocate(base + offset) if allocate else np.empty(base + offset, dtype=np.uint8)
        out[:base] = prefix
    flat = torch.from_numpy(out)
    for name in order:
        t, (begin, end) = tensors[name], header[name]["data_offsets"]
        written = flat[base + begin:base + end].view(_out_dtype(t, dtype))
        written.view(t.shape).copy_(t)
        if nonfinite is not None and written.is_floating_point() and not _finite(written):
            nonfinite.append(name)
    return out


def put_buckets(buckets: list[np.ndarray]) -> list:
    """`ray.put` every bucket; returns the ObjectRefs (pass them inside a list so Ray does
    not resolve them on the way into the pool)."""
    import ray

    return [ray.put(b) for b in buckets]


# ---------------------------------------------------------------- full weights: engine side
def parse_bucket(blob) -> list[tuple[str, torch.Tensor]]:
    """Read a safetensors blob (bytes or a uint8 array, possibly read-only) into
    (name, tensor) pairs that view the blob's memory (no copy)."""
    buf = np.frombuffer(blob, dtype=np.uint8) if isinstance(blob, (bytes, bytearray, memoryview)) else blob
    if buf.ndim != 1 or buf.dtype != np.uint8 or buf.size < 8:
        raise SyncError("a weight bucket is not a safetensors blob")
    header_len = int.from_bytes(buf[:8].tobytes(), "little")
    header = json.loads(buf[8:8 + header_len].tobytes())
    header.pop("__metadata__", None)
    base = 8 + header_len
    out = []
    with warnings.catch_warnings():
        # Object-store buffers are read-only; the tensors are only ever read (copied from).
        warnings.simplefilter("ignore", UserWarning)
        for name, info in header.items():
            dtype = ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise SyncError(f"{name}: unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            count = (end - begin) // torch.empty((), dtype=dtype).element_size()
            flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=base + begin) if count else \
                torch.empty(0, dtype=dtype)
            out.append((name, flat.reshape(info["shape"])))
    return out


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in a HF directory's safetensors files (headers only)."""
    shapes = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        shapes.update({k: tuple(v["shape"]) for k, v in header.items()})
    return shapes


def check_full_weights(named: list[tuple[str, torch.Tensor]], expected: dict[str, tuple[int, ...]],
                       optional: set[str] = frozenset(), values: bool = True) -> None:
    """Reject a sync before commit: unknown names, wrong shapes, missing names and (with
    `values`) non-finite values. `optional`: names that may be absent (a tied lm_head)."""
    seen = set()
    for name, t in named:
        if name not in expected:
            raise SyncError(f"unknown weight {name!r} (not in the engine's checkpoint)")
        if tuple(t.shape) != expected[name]:
            raise SyncError(f"{name}: shape {tuple(t.shape)} != checkpoint shape {expected[name]}")
        if values and t.is_floating_point() and not _finite(t):
            raise SyncError(f"{name}: non-finite values")
        seen.add(name)
    missing = set(expected) - seen - set(optional)
    if missing:
        raise SyncError(f"{len(missing)} weights missing, e.g. {sorted(missing)[:3]}")


def _finite(t: torch.Tensor) -> bool:
    """No NaN/inf in `t`: one reduction pass instead of a bool tensor per weight (a single
    NaN or inf makes the sum non-finite; real weights cannot overflow float32's range).
    float32 and bfloat16 sum natively (CPU accumulates bf16 in float, 15x faster than
    asking for a float32 result); float16 would overflow at 65504, so it sums to float32."""
    total = torch.sum(t, dtype=torch.float32) if t.dtype == torch.float16 else torch.sum(t)
    return bool(torch.isfinite(total))


# ---------------------------------------------------------------- LoRA adapters
@dataclass(frozen=True)
class AdapterPayload:
    """A PEFT adapter in memory: its config (dict) and its safetensors weights (uint8 [n])."""

    config: dict
    weights: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 0))


def adapter_from_dir(path: str | Path) -> AdapterPayload:
    """Read a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    path = Path(path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    weights = np.frombuffer((path / ADAPTER_WEIGHTS).read_bytes(), dtype=np.uint8)
    return AdapterPayload(config, weights)


def adapter_from_peft(peft_model, weights: Mapping[str, torch.Tensor] | None = None) -> AdapterPayload:
    """The adapter of a PeftModel (or of `weights`, its trainable weights gathered from
    FSDP shards and named as in the trainer); base weights are not sent."""
    from peft import get_peft_model_state_dict

    state = hf_names(weights) if weights is not None else None
    adapter = get_peft_model_state_dict(peft_model, state_dict=state)
    config = peft_model.peft_config["default"].to_dict()
    # JSON-safe: PEFT keeps target_modules as a set and some fields as enums.
    config = json.loads(json.dumps(config, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    blob = _blob({k: v.detach().cpu().contiguous() for k, v in adapter.items()})
    return AdapterPayload(config, blob)


def write_adapter(payload: AdapterPayload, dest: Path) -> Path:
    """Materialise the adapter as a PEFT directory that vLLM's LoRARequest can load."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / ADAPTER_CONFIG).write_text(json.dumps(payload.config))
    (dest / ADAPTER_WEIGHTS).write_bytes(payload.weights.tobytes())
    return dest


def check_adapter(payload: AdapterPayload, max_rank: int) -> None:
    """Reject an adapter before commit: rank above the engine's, non-LoRA or non-finite weights."""
    if not 1 <= payload.rank <= max_rank:
        raise SyncError(f"adapter rank {payload.rank} outside 1..{max_rank} (rollout.max_lora_rank)")
    named = parse_bucket(payload.weights)
    if not named or not all("lora_" in n for n, _ in named):
        raise SyncError("adapter weights must be LoRA matrices (names with lora_A / lora_B)")
    for name, t in named:
        if not _finite(t):
            raise SyncError(f"{name}: non-finite values")


# ---------------------------------------------------------------- driver / trainer side
@dataclass(frozen=True)
class SyncReport:
    """A finished sync: the new policy version, its size and where the time went."""

    version: int
    mode: str
    nbytes: int
    pack_s: float
    apply_s: float

    @property
    def seconds(self) -> float:
        return self.pack_s + self.apply_s


@dataclass(frozen=True)
class FullWeights:
    """Where engines find a full sync's buckets: files that engines on `node_id` map
    (`paths`, shm.py), and/or object-store refs (`refs`) for engines on other nodes. Refs
    inside a dataclass are not resolved by Ray on the way into the pool; engines get them."""

    node_id: str | None = None
    paths: tuple[str, ...] = ()
    refs: tuple = ()


class WeightSync:
    """Pushes a trainer's weights to a RolloutPool actor (call from the trainer's rank 0).

    `dtype`: cast floating weights while packing ("auto": to the engines' `rollout.dtype`,
    so a bf16 engine is not sent fp32 it would only cast; None: send as they are).
    `shared`: pack full weights into shared-memory files for engines on this node (falls
    back to the object store when /dev/shm is missing or too small).
    """

    def __init__(self, pool, bucket_mb: float = 256, dtype: str | torch.dtype | None = "auto",
                 shared: bool = True):
        self.pool = pool
        self.bucket_mb = bucket_mb
        self._dtype = dtype
        self._shared_ok = shared and SHM_DIR.is_dir()
        self._buffers: list[np.ndarray] = []  # object-store path: the last blobs (reused)
        self._served: tuple[FullWeights, list[np.ndarray]] | None = None  # the pool's full weights
        self._last: AdapterPayload | None = None  # the last adapter sent, when it was one
        self._pool_name: str | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        if self._dtype == "auto":
            import ray

            self._dtype = ray.get(self.pool.describe.remote())["dtype"]
        return getattr(torch, self._dtype) if isinstance(self._dtype, str) else self._dtype

    def full(self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
             version: int | None = None) -> SyncReport:
        """Send every weight (HF names; a trainer's `lm.` prefix is stripped). `version`: the
        policy version to serve them as (default: the pool's next one)."""
        import ray

        t0 = time.perf_counter()
        weights = hf_names(dict(weights))
        here, info = ray.get_runtime_context().get_node_id(), ray.get(self.pool.describe.remote())
        payload, buffers, slot = self._pack(weights, here, set(info["nodes"]), info["name"])
        t1 = time.perf_counter()
        version = ray.get(self.pool.sync_full.remote(payload, version))
        if slot is not None:
            slots_for(info["name"]).live = slot
        self._pool_name = info["name"]
        self._served, self._last = (payload, buffers), None
        return SyncReport(version, "full", sum(int(b.size) for b in buffers), t1 - t0, time.perf_counter() - t1)

    def _pack(self, weights: dict[str, torch.Tensor], here: str, nodes: set[str],
              pool_name: str) -> tuple[FullWeights, list[np.ndarray], int | None]:
        """Pack into shared memory when an engine shares this node (`here`), else into plain
        buffers; put them in the object store too when an engine is elsewhere. Returns the
        payload, its buffers and the shared slot written (None: none). Raises SyncError,
        before anything is sent, when a weight holds NaN/inf."""
        buffers = slot = None
        # Values are checked here, once, as they are packed, not on every engine (a separate
        # scan of the fp32 weights costs more than the check of each bucket slice in cache).
        bad: list[str] = []
        if here in nodes and self._shared_ok:
            try:
                shared = slots_for(pool_name)
                slot = shared.next_slot()
                buffers = pack_buckets(weights, self.bucket_mb, self.dtype, shared.slots[slot], shared.allocate, bad)
                paths = shared.store(slot, buffers)  # the slot is not served: written over freely
            except OSError as err:  # /dev/shm too small (ENOSPC) or not writable
                warnings.warn(f"weight sync: shared memory unavailable ({err}); using the object store", stacklevel=2)
                self._shared_ok, buffers, slot = False, None, None
                bad.clear()
        if buffers is None:
            buffers = self._buffers = pack_buckets(weights, self.bucket_mb, self.dtype, self._buffers, nonfinite=bad)
            paths = ()
        if bad:
            raise SyncError(f"{len(bad)} weights hold NaN/inf, e.g. {bad[:3]}; nothing was sent")
        refs = tuple(put_buckets(buffers)) if not paths or nodes - {here} else ()
        return FullWeights(here if paths else None, paths, refs), buffers, slot

    def close(self) -> None:
        """Delete the shared-memory files (a trainer's end: engines keep what they loaded)."""
        if self._served is not None and self._served[0].paths:
            release(self._pool_name)
        self._served = None

    def lora(self, adapter: AdapterPayload | str | Path, version: int | None = None) -> SyncReport:
        """Send only a LoRA adapter (a payload or a PEFT adapter directory)."""
        import ray

        t0 = time.perf_counter()
        payload = adapter if isinstance(adapter, AdapterPayload) else adapter_from_dir(adapter)
        t1 = time.perf_counter()
        version = ray.get(self.pool.sync_lora.remote(payload, version))
        self._last = payload
        return SyncReport(version, "lora", int(payload.weights.size), t1 - t0, time.perf_counter() - t1)

    def resend(self, pool, version: int) -> SyncReport:
        """Load the last weights sent into `pool` (a rebuilt one) as `version`, from the
        buffers kept here: no gather from the trainer, which may be mid-step."""
        import ray

        self.pool = pool
        t0 = time.perf_counter()
        if self._last is not None:
            got = ray.get(pool.sync_lora.remote(self._last, version))
            return SyncReport(got, "lora", int(self._last.weights.size), 0.0, time.perf_counter() - t0)
        if self._served is None:
            return SyncReport(ray.get(pool.status.remote())["version"], "none", 0, 0.0, 0.0)
        payload, buffers = self._served
        if not payload.refs and set(ray.get(pool.describe.remote())["nodes"]) - {payload.node_id}:
            # The rebuilt pool has engines away from the shared files: give them refs too.
            payload = FullWeights(payload.node_id, payload.paths, tuple(put_buckets(buffers)))
        got = ray.get(pool.sync_full.remote(payload, version))
        self._served = (payload, buffers)
        return SyncReport(got, "full", sum(int(b.size) for b in buffers), 0.0, time.perf_counter() - t0)
