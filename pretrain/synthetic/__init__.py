"""A deterministic procedural image/caption dataset for tests and the demo.

Scenes (:mod:`.scenes`: background + coloured shapes on a 3x3 grid) are sampled, drawn
(:mod:`.render`), described (:mod:`.captions`: noisy web alt-text, long synthetic caption, eval
captions) and written (:mod:`.writers`: webdataset shards, JSONL + images, parquet, Karpathy eval
split; :mod:`.questions` + :mod:`.instructions`: LLaVA-format question/answer data). Every sample is a function of ``(seed, index)``.

    from pretrain.synthetic import write_webdataset, write_retrieval_split
    write_webdataset("data/train", n=2000, seed=0, shard_size=500)
    write_retrieval_split("data/val", n=100, seed=1)
"""

from .captions import reference_captions, synthetic_caption, web_caption
from .instructions import SHORT_ANSWER_PROMPT, write_instruction_data
from .questions import QUESTION_KINDS, Question, scene_questions
from .render import render_scene
from .scenes import Scene, SceneObject, sample_scene
from .writers import (
    SYNTHETIC_KEY,
    WEB_KEY,
    SyntheticSample,
    encode_image,
    generate_sample,
    write_jsonl,
    write_parquet,
    write_retrieval_split,
    write_webdataset,
)

__all__ = [
    "QUESTION_KINDS", "Question", "SHORT_ANSWER_PROMPT", "scene_questions", "write_instruction_data",
    "SYNTHETIC_KEY", "Scene", "SceneObject", "SyntheticSample", "WEB_KEY", "encode_image", "generate_sample",
    "reference_captions", "render_scene", "sample_scene", "synthetic_caption", "web_caption", "write_jsonl",
    "write_parquet", "write_retrieval_split", "write_webdataset",
]
