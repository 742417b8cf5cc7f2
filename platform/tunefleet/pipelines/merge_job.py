"""`tunefleet merge PARENT PARENT... --out DIR`: fine-tunes of one base -> one merged HF directory.

A merge is a job kind. Order: check the options, the output dir and the eval suites; resolve
every parent (an MLflow training run id, `models:/NAME/VERSION`, an HF directory or a LoRA
adapter directory) and its recorded base; refuse parents of different bases or with tensors
whose names, shapes or dtypes differ from the base's (read from safetensors headers) - all
before any weights load or any MLflow run exists. Then: full weights per parent (a LoRA adapter
merged into its base, models/export.merge_adapter), models/merging.py on the state dicts, an HF
dir (the base's config, tokenizer and chat template + LINEAGE_FILE naming every parent), one
MLflow run in experiment `tunefleet-merge` with the merge's params, the dir logged as an
MLflow model, the eval suites' `eval/<suite>/<metric>` (eval/runner.py's code), and with
`register` a registry version whose `tunefleet.parent` lists all parents.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunefleet.models.export import ADAPTER_CONFIG, LINEAGE_FILE
from tunefleet.models.merging import MergeError, check_options, check_same_base, check_specs

EXPERIMENT = "tunefleet-merge"
ARTIFACT = "merged"


@dataclass(frozen=True)
class MergeRequest:
    parents: tuple[str, ...]
    out: str
    method: str = "linear"  # models/merging.METHODS
    weights: tuple[float, ...] | None = None  # one per parent; default 1/n (TIES: 1 each)
    density: float = 1.0  # TIES: fraction kept by magnitude; DARE: 1 - drop probability
    scale: float = 1.0  # lambda: theta = base + scale * merged task vector
    seed: int = 0  # DARE's drop masks
    base: str | None = None  # default: the base the parents record
    suites: tuple[str, ...] = ()  # eval suites, as `tunefleet eval` takes them
    limit: int | None = None
    register: str | None = None
    tracking_uri: str | None = None
    experiment: str = EXPERIMENT


@dataclass(frozen=True)
class Parent:
    """`label`: the lineage name (models:/N/V, run id or path); `model_dir`: full HF weights, or
    the base when `adapter` is set; `base_name`: the base it records (None: it records none),
    `base`: that name resolved to one spelling (base_key), which is what parents must share."""

    spec: str
    label: str
    model_dir: Path
    adapter: Path | None
    base_name: str | None

    def base(self, tracking_uri: str | None = None) -> str | None:
        return base_key(self.base_name, tracking_uri) if self.base_name else None


@dataclass
class MergeResult:
    out: Path
    run_id: str
    model_uri: str
    version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def base_key(name: str, tracking_uri: str | None = None) -> str:
    """One spelling per base: `models:/...` as is, a path or alias as its resolved directory."""
    from tunefleet.tracking.sources import is_registered_uri

    if is_registered_uri(name):
        return name
    from tunefleet.models.registry import resolve_model

    try:
        return str(Path(resolve_model(name)).resolve())
    except ValueError:
        return name


def source_dir(name: str, tracking_uri: str | None = None) -> Path:
    """A local HF directory for a base: `models:/NAME/VERSION`, a directory or an alias."""
    from tunefleet.models.registry import resolve_model
    from tunefleet.tracking.sources import is_registered_uri, registered_model_dir

    return registered_model_dir(name, tracking_uri) if is_registered_uri(name) else Path(resolve_model(name))


def _recorded(model_dir: Path) -> tuple[str | None, str | None]:
    """(base_model, registered) from a directory's LINEAGE_FILE, if it has one."""
    info = model_dir / LINEAGE_FILE
    if not info.is_file():
        return None, None
    data = json.loads(info.read_text())
    return data.get("base_model"), data.get("registered")


def resolve_parent(spec: str, tracking_uri: str | None = None) -> Parent:
    """The Parent `spec` names (see the module doc); MergeError when it is no model."""
    from tunefleet.eval.targets import TargetError, resolve_target
    from tunefleet.tracking.sources import RegistryError, is_registered_uri, registered_model_dir

    try:
        if is_registered_uri(spec):
            model_dir = registered_model_dir(spec, tracking_uri)
            return Parent(spec, spec, model_dir, None, _recorded(model_dir)[0])
        target = resolve_target(spec, None, tracking_uri)
    except (RegistryError, TargetError) as err:
        raise MergeError(f"parent {err}") from None
    base, registered = _recorded(Path(target.model_dir)) if target.adapter is None else (None, None)
    if target.run_id:
        base = _run_base(target.run_id, tracking_uri)
    elif target.adapter is not None:  # resolve_target found the adapter's base from its adapter_config
        base = json.loads((Path(target.adapter) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        base = base or target.model_dir
    adapter = Path(target.adapter) if target.adapter else None
    return Parent(spec, target.run_id or registered or spec, Path(target.model_dir), adapter, base)


def _run_base(run_id: str, tracking_uri: str | None) -> str:
    from tunefleet.pipelines.export_job import ExportRequest, _run_and_config

    return _run_and_config(ExportRequest(run_id, "", tracking_uri=tracking_uri))[2].model.name


def read_specs(model_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """tensor name -> (shape, dtype) from the safetensors headers only (no weights read)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise MergeError(f"{model_dir} has no safetensors weights")
    dtypes = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64", "I64": "int64"}
    specs = {}
    for f in files:
        with safe_open(str(f), "pt") as sf:
            for name in sf.keys():
                sl = sf.get_slice(name)
                specs[name] = (tuple(sl.get_shape()), dtypes.get(sl.get_dtype(), sl.get_dtype()))
    return specs


def load_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def check_parents(parents: list[Parent], base: str | None, tracking_uri: str | None = None) -> Path:
    """The common base's directory after the base and shape checks (MergeError naming the mismatch)."""
    recorded = {p.label: p.base(tracking_uri) for p in parents if p.base_name is not None}
    if base is not None:
        recorded = {"--base": base_key(base, tracking_uri), **recorded}
    if not recorded:
        raise MergeError("no parent records its base model (lineage file, adapter_config or run config): "
                         "give --base")
    base_dir = source_dir(check_same_base(recorded), tracking_uri)
    check_specs(read_specs(base_dir), {p.label: read_specs(p.model_dir) for p in parents if p.adapter is None},
                f"base {base_dir}")
    return base_dir


def _check_out(out: str) -> None:
    dest = Path(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MergeError(f"{dest} exists and is not empty; choose a new output directory")


def merged_weights(req: MergeRequest, parents: list[Parent], base_dir: Path) -> dict:
    """Load the base and every parent's full weights (adapters merged in a temp dir), merge."""
    from tunefleet.models.export import merge_adapter
    from tunefleet.models.merging import merge_state_dicts

    sds = []
    with tempfile.TemporaryDirectory(prefix="tunefleet-merge-") as tmp:
        for i, p in enumerate(parents):
            full = merge_adapter(p.model_dir, p.adapter, Path(tmp) / str(i)) if p.adapter else p.model_dir
            sds.append(load_weights(full))
    return merge_state_dicts(load_weights(base_dir), sds, req.method, req.weights, req.density, req.scale, req.seed)


def write_merged(req: MergeRequest, parents: list[Parent], base_dir: Path, base: str, weights: dict) -> Path:
    """The merged HF dir: the base's config/tokenizer/chat template, the weights, the lineage."""
    from tunefleet.models.export import export_full

    config = json.loads((base_dir / "config.json").read_text())
    out = export_full(Path(req.out), base_dir, weights, tied=bool(config.get("tie_word_embeddings", False)))
    lineage = {"kind": "merge", "method": req.method, "density": req.density, "scale": req.scale, "seed": req.seed,
               "weights": list(req.weights) if req.weights else None, "base_model": base,
               "parents": [p.label for p in parents], "parent": ",".join(p.label for p in parents)}
    (out / LINEAGE_FILE).write_text(json.dumps(lineage, indent=1, sort_keys=True))
    return out


def _update_lineage(out: Path, **extra) -> None:
    info = json.loads((out / LINEAGE_FILE).read_text())
    (out / LINEAGE_FILE).write_text(json.dumps({**info, **extra}, indent=1, sort_keys=True))


def _evaluate(tracker, out: Path, eval_req, suites, tasks) -> dict[str, dict[str, float]]:
    """Run `tunefleet eval`'s suites (eval/runner.py) on the merged dir; log into the merge run."""
    from tunefleet.eval.runner import log_suite, log_suite_data, run_suites
    from tunefleet.eval.targets import resolve_target
    from tunefleet.models.registry import load_tokenizer

    target = resolve_target(str(out))
    log_suite_data(tracker, suites, tasks)
    metrics = {}
    with tempfile.TemporaryDirectory(prefix="tunefleet-merge-eval-") as tmp:
        results = run_suites(eval_req, target, suites, tasks, load_tokenizer(out))
        for s in [*suites, *tasks]:
            metrics[s.name], rows = results[s.name]
            log_suite(tracker, s.name, metrics[s.name], rows, Path(tmp))
        tracker.flush()  # artifacts are read from tmp
    return metrics


def _registry_tags(run_id: str, parents: list[Parent], metrics: dict[str, dict[str, float]]) -> dict[str, str]:
    from tunefleet.tracking import registry

    tags = {registry.TAG_RUN: run_id, registry.TAG_STEP: "-", registry.TAG_DATA: "{}",
            registry.TAG_PARENT: ",".join(p.label for p in parents)}
    if metrics:  # the first suite's headline (first) metric is the objective column
        suite, values = next(iter(metrics.items()))
        name, value = next(iter(values.items()))
        tags[registry.TAG_METRIC], tags[registry.TAG_OBJECTIVE] = f"eval/{suite}/{name}", repr(float(value))
    return tags


def prepare_merge(req: MergeRequest):
    """Every check that needs no weights: (eval request, suites, tasks, parents, base dir, base)."""
    from tunefleet.eval.runner import EvalRequest, prepare

    check_options(req.method, len(req.parents), req.weights, req.density)
    _check_out(req.out)
    eval_req = EvalRequest(req.out, req.suites, limit=req.limit, seed=req.seed, tracking_uri=req.tracking_uri)
    suites, tasks = prepare(eval_req) if req.suites else ([], [])
    parents = [resolve_parent(p, req.tracking_uri) for p in req.parents]
    base_dir = check_parents(parents, req.base, req.tracking_uri)
    base = req.base or next(p.base_name for p in parents if p.base_name is not None)
    return eval_req, suites, tasks, parents, base_dir, base


def run_merge(req: MergeRequest) -> MergeResult:
    """Check, merge, write, track, evaluate, register. See the module doc."""
    from tunefleet.tracking import Tracker, registry

    eval_req, suites, tasks, parents, base_dir, base = prepare_merge(req)
    print(f"[merge] {req.method} of {', '.join(p.label for p in parents)} (base {base}) -> {req.out}", flush=True)
    out = write_merged(req, parents, base_dir, base, merged_weights(req, parents, base_dir))
    tracker = Tracker.start(req.tracking_uri, req.experiment, f"merge-{req.method}",
                            tags={"tunefleet.kind": "merge", "tunefleet.merge.method": req.method,
                                  registry.TAG_PARENT: ",".join(p.label for p in parents)})
    try:
        tracker.log_params({"merge.method": req.method, "merge.density": req.density, "merge.scale": req.scale,
                            "merge.seed": req.seed, "merge.weights": json.dumps(req.weights),
                            "merge.parents": json.dumps([p.label for p in parents]), "merge.base": base,
                            "eval.suites": ",".join(req.suites), "eval.limit": req.limit})
        _update_lineage(out, run_id=tracker.run_id)
        model_uri = registry.log_hf_model(tracker.client, tracker.run_id, out, ARTIFACT)
        metrics = _evaluate(tracker, out, eval_req, suites, tasks) if suites or tasks else {}
        result = MergeResult(out, tracker.run_id, model_uri,
                             metrics={f"eval/{s}/{k}": v for s, m in metrics.items() for k, v in m.items()})
        if req.register:
            mv = registry.register_version(tracker.client, req.register, model_uri, tracker.run_id,
                                           _registry_tags(tracker.run_id, parents, metrics))
            result.version = str(mv.version)
            _update_lineage(out, registered=f"models:/{mv.name}/{mv.version}")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return result
