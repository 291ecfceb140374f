"""The statistics of a dataset's training split that planning needs (utterances, mean duration, a sample of its
texts), from the prepared corpus where it exists, else from a synthetic corpus's own generator (texts exact,
durations typical), else from the corpus's typical published values (steermoe.declare.corpora)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from steermoe.data.registry import corpus_module
from steermoe.declare.corpora import SYNTH_CORPORA, typical

TEXT_SAMPLE = 2000  # training rows sampled for prompt / target lengths


@dataclass
class DataStats:
    n_train: int | None
    mean_seconds: float | None
    targets: list[str] = field(default_factory=list)  # a sample of training targets
    questions: list[str] = field(default_factory=list)  # per-sample prompts (QA), aligned with targets or empty
    target_bytes: float | None = None  # typical values when no texts are at hand
    question_bytes: float | None = None
    source: str = ""


def _sample(values: list, n: int = TEXT_SAMPLE) -> list:
    if len(values) <= n:
        return list(values)
    step = len(values) / n
    return [values[int(i * step)] for i in range(n)]


def _prepared_stats(data_dir: str, train_files: list[str], root: Path, texts: bool) -> DataStats | None:
    if not data_dir or not (root / data_dir / "manifest.json").is_file():
        return None
    import pyarrow.parquet as pq

    manifest_path = root / data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    files = train_files or [f"{data_dir}/train.parquet"]
    splits = [Path(f).stem for f in files]
    missing = [s for s in splits if s not in manifest.get("splits", {})]
    if missing:
        return None
    rows = sum(manifest["splits"][s]["rows"] for s in splits)
    hours = sum(manifest["splits"][s]["hours"] for s in splits)
    targets, questions = [], []
    for f in files if texts else []:
        path = root / f
        if not path.is_file():
            continue
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in ("text", "prompt") if c in names])
        texts = table.column("text").to_pylist()
        prompts = table.column("prompt").to_pylist() if "prompt" in names else [None] * len(texts)
        targets += texts
        questions += [p or "" for p in prompts]
    index = _sample(list(range(len(targets))))
    return DataStats(n_train=rows, mean_seconds=hours * 3600 / rows if rows else None,
                     targets=[targets[i] for i in index], questions=[questions[i] for i in index],
                     source=f"prepared corpus {manifest_path}")


def _synth_stats(entry: dict, quick: bool, texts: bool) -> DataStats:
    name = entry["synth"]
    module = corpus_module(name)
    sizes = {**module.DEFAULT_SIZES, **(entry.get("sizes") or {}),
             **((entry.get("quick") or {}).get("sizes") or {} if quick else {})}
    train_splits = ((entry.get("splits") or {}).get("train")) or ["train"]
    n_train = sum(sizes.get(s, 0) for s in train_splits)
    sample = {s: min(sizes.get(s, 0), TEXT_SAMPLE) for s in train_splits}
    source = f"{name} generator (not built yet)"
    if not texts:
        return DataStats(n_train, SYNTH_CORPORA[name].seconds, source=source)
    if hasattr(module, "targets"):
        planned = module.targets(sample, 0)
        targets = [text for s in train_splits for text in planned.get(s, [])]
        return DataStats(n_train, SYNTH_CORPORA[name].seconds, targets, [], source=source + ", typical duration")
    examples = [e for s in train_splits for e in module.plan_split(s, sample[s], 0)]
    seconds = sum(e.scene.duration for e in examples) / len(examples) if examples else None
    return DataStats(n_train, seconds, [e.qa.answer for e in examples], [e.qa.question for e in examples],
                     source=source)


def dataset_stats(entry: dict, data_dir: str, train_files: list[str], root: Path, quick: bool = False,
                  texts: bool = True) -> DataStats:
    """The training split of catalog dataset `entry` (prepared into `data_dir`, read from `train_files`): the
    prepared corpus where it exists, else its generator, else the corpus's typical values. Without `texts`, no
    sample of texts is read (what the workflow's memory requests need while the Snakefile parses)."""
    prepared = _prepared_stats(data_dir, train_files, root, texts)
    if prepared is not None:
        return prepared
    if entry.get("synth"):
        return _synth_stats(entry, quick, texts)
    corpus = (entry.get("prepare") or {}).get("corpus")
    known = typical(corpus) if corpus else None
    if known is not None:
        seconds, n_train = known.seconds, None
        published = [known.splits.get(s) for s in (entry.get("splits") or {}).get("train") or []]
        if published and all(published):  # published split sizes: the mean duration follows from them
            n_train = sum(n for n, _ in published)
            seconds = sum(h for _, h in published) * 3600 / n_train
        return DataStats(n_train, seconds, target_bytes=known.target_bytes, question_bytes=known.question_bytes,
                         source=f"typical {corpus} values (not prepared yet)")
    return DataStats(None, None, source="unknown (not prepared yet)")
