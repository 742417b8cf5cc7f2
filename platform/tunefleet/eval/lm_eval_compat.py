"""`tunefleet eval TARGET --lm-eval TASK_YAML`: an lm-evaluation-harness (PyPI `lm-eval` 0.4.x)
task on any TARGET, through the harness's own `hf` model, logged like our suites.

The harness runs offline for local-file tasks (`dataset_path: json` with
`dataset_kwargs: {data_files: ...}`); HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set unless the
caller set them. Its metrics `name,filter` become `eval/<task>/<name>` (the `none` filter is
dropped, others are kept as `<name>_<filter>`); stderr entries are not logged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunefleet.data.readers import DataError

_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class HarnessTask:
    """A task YAML: its `task` name, the folder the harness includes, and its local data files."""

    path: str
    name: str
    data_files: tuple[str, ...]

    @property
    def rows(self) -> int:
        """Non-empty lines of the data files (JSONL rows); -1 when there are none to count."""
        if not self.data_files:
            return -1
        return sum(1 for f in self.data_files for line in Path(f).read_text().splitlines() if line.strip())

    @property
    def digest(self) -> str:
        h = hashlib.sha256(Path(self.path).read_bytes())
        for f in self.data_files:
            h.update(Path(f).read_bytes())
        return h.hexdigest()


def _data_files(spec, base: Path) -> list[str]:
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, dict):
        return [f for v in spec.values() for f in _data_files(v, base)]
    return [str(p if (p := Path(f)).is_absolute() else base / p) for f in (spec or [])]


def read_task(path: str) -> HarnessTask:
    """Check a task YAML before any model loads: it exists, names a `task`, its data files exist."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such lm-eval task file")
    try:
        # Harness YAMLs may carry `!function` tags; only the plain keys matter here.
        doc = yaml.load(p.read_text(), Loader=_lenient_loader())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", 0) + 1
        raise DataError(f"{path}:{line}: invalid YAML ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        raise DataError(f"{path}:1: an lm-eval task YAML needs a `task: NAME` key")
    files = _data_files((doc.get("dataset_kwargs") or {}).get("data_files"), p.parent)
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"{path}:1: data file {missing[0]} does not exist")
    return HarnessTask(str(p.resolve()), doc["task"], tuple(files))


def _lenient_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor(None, lambda loader, node: None)  # unknown tags (!function) -> None
    return Loader


def model_args(model_dir: str, adapter: str | None, dtype: str = "float32") -> str:
    """The harness's `hf` model_args for a Target."""
    args = f"pretrained={model_dir},dtype={dtype}"
    return args + (f",peft={adapter}" if adapter else "")


def metrics_of(task_results: dict) -> dict[str, float]:
    """{'acc,none': 0.5, 'acc_stderr,none': 0.1, 'alias': 't'} -> {'acc': 0.5}."""
    out = {}
    for key, value in task_results.items():
        name, _, filt = key.partition(",")
        if "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out[name if filt in ("", "none") else f"{name}_{filt}"] = float(value)
    return out


def sample_rows(samples: list[dict], metric_names: list[str]) -> list[dict]:
    """Per-example rows {id, input, reference, output, score} from the harness's logged samples."""
    rows = []
    for s in samples:
        args = s.get("arguments") or [[""]]
        first = args[0] if isinstance(args, list) else next(iter(args.values()), [""])
        score = next((s[m] for m in metric_names if isinstance(s.get(m), (int, float))), float("nan"))
        rows.append({"id": str(s.get("doc_id", len(rows))), "input": str(first[0] if first else ""),
                     "reference": str(s.get("target", "")), "output": json.dumps(s.get("filtered_resps"),
                                                                                   default=str),
                     "score": float(score)})
    return rows


def run_harness(task: HarnessTask, model_dir: str, adapter: str | None, limit: int | None = None,
                seed: int = 0, batch_size: int = 8, dtype: str = "float32") -> tuple[dict, list[dict]]:
    """(metrics, per-example rows) of one harness task through lm-eval's `hf` model."""
    for key, value in _OFFLINE.items():
        os.environ.setdefault(key, value)
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf", model_args=model_args(model_dir, adapter, dtype), tasks=[task.name],
        task_manager=TaskManager(include_path=str(Path(task.path).parent)), limit=limit, batch_size=batch_size,
        device="cpu", log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed)
    metrics = metrics_of(results["results"][task.name])
    return metrics, sample_rows(results.get("samples", {}).get(task.name, []), list(metrics))
