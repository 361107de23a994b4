"""The toolkit's one synthetic world: a deterministic procedural image/caption/question dataset
used by pretraining tests, eval, the lmms-eval tasks, the benchmarks and the demo.

Scenes (:mod:`.scenes`: background + coloured shapes on a 3x3 grid + an optional named label band)
are sampled, drawn (:mod:`.render`), described (:mod:`.captions`: noisy web alt-text, long
MLLM-style synthetic caption with configured omission/hallucination rates (:mod:`.config`), eval
queries), asked about (:mod:`.questions`) and written, one writer per output format
(:mod:`.writers`: webdataset shards, JSONL + images, parquet, Karpathy eval split;
:mod:`.instructions`: LLaVA stage-1/2 JSON; :mod:`.tasks`: lmms-eval POPE/GQA/MMBench records).
Every sample is a function of ``(seed, index)``.

    from pretrain.synthetic import write_webdataset, write_retrieval_split
    write_webdataset("data/train", n=2000, seed=0, shard_size=500)
    write_retrieval_split("data/val", n=100, seed=1)
"""

from .captions import perceived_objects, reference_captions, synthetic_caption, web_caption
from .config import CLEAN_WORLD, DEFAULT_WORLD, WorldConfig
from .instructions import SHORT_ANSWER_PROMPT, write_instruction_data
from .questions import QUESTION_KINDS, Question, scene_questions
from .render import render_scene
from .scenes import Scene, SceneObject, sample_scene
from .writers import (
    SYNTHETIC_KEY,
    WEB_KEY,
    SyntheticSample,
    encode_image,
    encode_image_base64,
    generate_sample,
    write_jsonl,
    write_parquet,
    write_retrieval_split,
    write_webdataset,
)

from .tasks import task_records, write_task_data

__all__ = [
    "CLEAN_WORLD", "DEFAULT_WORLD", "WorldConfig", "encode_image_base64", "perceived_objects", "task_records",
    "write_task_data",
    "QUESTION_KINDS", "Question", "SHORT_ANSWER_PROMPT", "scene_questions", "write_instruction_data",
    "SYNTHETIC_KEY", "Scene", "SceneObject", "SyntheticSample", "WEB_KEY", "encode_image", "generate_sample",
    "reference_captions", "render_scene", "sample_scene", "synthetic_caption", "web_caption", "write_jsonl",
    "write_parquet", "write_retrieval_split", "write_webdataset",
]
