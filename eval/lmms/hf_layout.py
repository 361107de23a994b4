"""Local copies of the HF datasets that lmms-eval's own ``pope``, ``gqa``, ``mme`` and
``mmbench_en_dev`` tasks read, in those datasets' exact layout, so the unchanged task YAMLs run
offline.

lmms-eval 0.7.3's YAMLs name hub repos (``dataset_path: lmms-lab-encoder/POPE``; GQA's
``process_docs`` also calls ``load_dataset("lmms-lab-encoder/GQA", "testdev_balanced_images")``).
``datasets.load_dataset`` treats a path that names an existing local folder as a local dataset,
so a *data folder* holding ``lmms-lab-encoder/POPE/...`` (a dataset repo: parquet files plus a
``README.md`` whose ``configs`` list the configs and splits) serves those names when lmms-eval runs
with the data folder as its working directory (:func:`eval.lmms.runner.run_lmms_eval` does that).
A ``git clone`` of the real dataset repo into the same place works the same way.

:data:`HF_TASKS` describes, per task, the repo, its configs and splits and the columns the task's
``doc_to_*``/``process_results`` read; :func:`write_hf_datasets` writes small datasets of that
layout from the records of :mod:`pretrain.synthetic.tasks` (one call, :func:`task_records`);
:func:`check_hf_datasets` checks a data folder before a run and names the task, file and missing
column.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from clips_tower.io import atomic_write_text

# The one dependency on the scene/question generator: its three record files.
from pretrain.synthetic.tasks import task_records  # the generator's POPE / GQA / MMBench records, by file name


class HFLayoutError(ValueError):
    """A local dataset does not have what an lmms-eval task reads; the message names task, file, column."""


@dataclass(frozen=True)
class SplitSchema:
    """One split of one config of an HF dataset repo: its parquet file (relative to the repo
    folder, as the real repos name them) and its columns (name -> ``datasets`` feature spec:
    ``"string"``, ``"int64"``, ``"bool"`` or ``"image"``); ``read`` are the columns lmms-eval's
    task functions use (checked by :func:`check_hf_datasets`)."""

    config: str
    split: str
    file: str
    columns: dict[str, str]
    read: tuple[str, ...]


@dataclass(frozen=True)
class HFTask:
    """An lmms-eval task and the dataset repo(s) it loads."""

    repo: str
    splits: tuple[SplitSchema, ...]


_S, _I = "string", "image"
HF_TASKS: dict[str, HFTask] = {
    # pope.yaml: dataset_path lmms-lab-encoder/POPE, test_split test; utils read image, question,
    # answer (yes/no), question_id.
    "pope": HFTask("lmms-lab-encoder/POPE", (SplitSchema(
        "default", "test", "data/test-00000-of-00001.parquet",
        {"id": _S, "question_id": _S, "question": _S, "answer": _S, "image_source": _S, "image": _I, "category": _S},
        ("question_id", "question", "answer", "image")),)),
    # gqa.yaml: dataset_name testdev_balanced_instructions, test_split testdev; process_docs joins
    # imageId onto config testdev_balanced_images (columns id, image).
    "gqa": HFTask("lmms-lab-encoder/GQA", (
        SplitSchema("testdev_balanced_instructions", "testdev",
                    "testdev_balanced_instructions/testdev-00000-of-00001.parquet",
                    {"id": _S, "imageId": _S, "question": _S, "answer": _S, "fullAnswer": _S, "isBalanced": "bool"},
                    ("imageId", "question", "answer")),
        SplitSchema("testdev_balanced_images", "testdev", "testdev_balanced_images/testdev-00000-of-00001.parquet",
                    {"id": _S, "image": _I}, ("id", "image")),
    )),
    # mme.yaml: test_split test; utils read image, question, answer (Yes/No), category (a
    # perception or cognition category) and question_id, which two questions (one yes, one no)
    # share per image: mme_aggregate_results asserts that pairing.
    "mme": HFTask("lmms-lab-encoder/MME", (SplitSchema(
        "default", "test", "data/test-00000-of-00001.parquet",
        {"question_id": _S, "image": _I, "question": _S, "answer": _S, "category": _S},
        ("question_id", "image", "question", "answer", "category")),)),
    # mmbench_en_dev.yaml (+ _default_template_mmbench_en_yaml): dataset_name en, test_split dev;
    # en_utils read index, question, hint, A-D, answer, category, L2-category, source, split, image.
    "mmbench_en_dev": HFTask("lmms-lab-encoder/MMBench", (SplitSchema(
        "en", "dev", "en/dev-00000-of-00001.parquet",
        {"index": "int64", "question": _S, "hint": _S, "answer": _S, "A": _S, "B": _S, "C": _S, "D": _S,
         "category": _S, "image": _I, "source": _S, "L2-category": _S, "comment": _S, "split": _S},
        ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "L2-category", "source", "split",
         "image")),)),
}
# Same dataset and columns, answers matched by rules instead of an OpenAI judge (fully offline).
HF_TASKS["mmbench_en_dev_static"] = HF_TASKS["mmbench_en_dev"]


def _png(record: dict) -> dict:
    """An HF ``Image`` cell from a record's base64 PNG (stored as is, not re-encoded)."""
    return {"bytes": base64.b64decode(record["image"]), "path": None}


def _pope_rows(records: dict[str, list[dict]]) -> dict[str, list[dict]]:
    rows = [{"id": str(k), "question_id": str(r["question_id"]), "question": r["question"], "answer": r["answer"],
             "image_source": r["image_source"], "image": _png(r), "category": r["category"]}
            for k, r in enumerate(records["clips_pope.jsonl"])]
    return {"test": rows}


def _mme_rows(records: dict[str, list[dict]]) -> dict[str, list[dict]]:
    # POPE's records come in (present: yes, absent: no) pairs per scene: exactly MME's pairing of
    # two questions per image; MME asks for "Yes"/"No" and ends its questions with this sentence.
    rows = [{"question_id": f"existence/{r['image_source']}.png", "image": _png(r),
             "question": r["question"].replace("the image?", "this image?") + " Please answer yes or no.",
             "answer": r["answer"].capitalize(), "category": "existence"}
            for r in records["clips_pope.jsonl"]]
    return {"test": rows}


def _gqa_rows(records: dict[str, list[dict]]) -> dict[str, list[dict]]:
    recs = records["clips_gqa.jsonl"]
    instructions = [{"id": r["question_id"], "imageId": r["imageId"], "question": r["question"], "answer": r["answer"],
                     "fullAnswer": f"The answer is {r['answer']}.", "isBalanced": True} for r in recs]
    images = [{"id": r["imageId"], "image": _png(r)} for r in recs]
    return {"testdev_balanced_instructions": instructions, "testdev_balanced_images": images}


def _mmbench_rows(records: dict[str, list[dict]]) -> dict[str, list[dict]]:
    columns = HF_TASKS["mmbench_en_dev"].splits[0].columns
    rows = [{**{k: r.get(k) for k in columns if k not in ("image", "hint", "comment")},
             "hint": r["hint"] or None, "comment": None, "image": _png(r)} for r in records["clips_mmbench.jsonl"]]
    return {"dev": rows}


# Task -> rows keyed by split (one-split repos) or by config (GQA's two configs).
_ROWS: dict[str, Callable[[dict[str, list[dict]]], dict[str, list[dict]]]] = {
    "pope": _pope_rows, "gqa": _gqa_rows, "mme": _mme_rows, "mmbench_en_dev": _mmbench_rows,
}


def _features(columns: dict[str, str]):
    from datasets import Features, Image, Value

    return Features({name: Image() if kind == _I else Value(kind) for name, kind in columns.items()})


def _readme(task: HFTask) -> str:
    """A dataset card whose ``configs`` metadata maps configs and splits to the parquet files."""
    configs: dict[str, list[SplitSchema]] = {}
    for s in task.splits:
        configs.setdefault(s.config, []).append(s)
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {s.split}\n    path: {s.file}" for s in splits]
    lines += ["---", "", f"Synthetic stand-in for `{task.repo}` (coloured-shape scenes), written by "
              "`clips eval lmms-data --layout hf`: same configs, splits and columns as the real dataset.", ""]
    return "\n".join(lines)


def write_hf_datasets(out_dir: str | Path, tasks: Sequence[str] = tuple(_ROWS), num_scenes: int = 100, seed: int = 0,
                      image_size: int = 64, max_objects: int = 2) -> dict[str, Path]:
    """Write the dataset repo of each of ``tasks`` under ``out_dir/<repo>`` (e.g.
    ``out_dir/lmms-lab-encoder/POPE``), rows from :func:`task_records`. Returns ``{task: repo dir}``.

    Rows: POPE 2 per scene (yes/no), MME 2 per scene (the same pair, category ``existence``), GQA 1,
    MMBench 4 per scene (CircularEval rotations, ``index = question + k * 1e6``).
    """
    unknown = sorted(set(tasks) - set(_ROWS))
    if unknown:
        raise ValueError(f"no HF layout for tasks {unknown}; known: {sorted(_ROWS)}")
    from datasets import Dataset

    records = task_records(num_scenes, seed, image_size, max_objects)
    written = {}
    for name in tasks:
        task, rows = HF_TASKS[name], _ROWS[name](records)
        repo = Path(out_dir) / task.repo
        for s in task.splits:
            # GQA's rows are keyed by config (both configs have split testdev), the others by split.
            data = rows[s.config] if s.config in rows else rows[s.split]
            data = [{c: row[c] for c in s.columns} for row in data]  # the real repos' column order
            path = repo / s.file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            Dataset.from_list(data, features=_features(s.columns)).to_parquet(str(tmp))
            tmp.replace(path)
        atomic_write_text(repo / "README.md", _readme(task))
        written[name] = repo
    return written


def check_hf_datasets(data_dir: str | Path, tasks: Sequence[str]) -> list[str]:
    """Check that ``data_dir`` holds, for each of ``tasks`` known to :data:`HF_TASKS`, the repo
    folder with every split file and the columns the task reads (image columns must be HF
    ``Image`` features). Returns the tasks found; raises :class:`HFLayoutError` naming the task,
    the file and the missing column. Tasks whose repo folder is absent are not returned (they load
    from the HF cache or the hub as usual)."""
    import pyarrow.parquet as pq

    found = []
    for name in tasks:
        task = HF_TASKS.get(name)
        if task is None or not (Path(data_dir) / task.repo).is_dir():
            continue
        for s in task.splits:
            path = Path(data_dir) / task.repo / s.file
            if not path.is_file():
                raise HFLayoutError(f"task {name}: {path} is missing (config {s.config!r}, split {s.split!r} of "
                                    f"{task.repo}); write it with `clips eval lmms-data --layout hf {data_dir}`")
            schema = pq.read_schema(path)
            for column in s.read:
                if column not in schema.names:
                    raise HFLayoutError(f"task {name}: {path} has no column {column!r} (lmms-eval's {name} reads "
                                        f"{list(s.read)}; the file has {schema.names})")
            meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
            features = (meta.get("info") or {}).get("features") or {}
            for column in (c for c in s.read if s.columns[c] == _I):
                if (features.get(column) or {}).get("_type") != "Image":
                    raise HFLayoutError(f"task {name}: {path}: column {column!r} is not an HF datasets Image feature "
                                        f"(write the file with datasets and features={{{column!r}: Image()}})")
        found.append(name)
    return found
