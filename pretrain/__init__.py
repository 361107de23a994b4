"""pretrain: CLIPS pretraining (and the CLIP baselines of the paper's comparison).

- :mod:`.sampling`: token-reduction strategies (truncate / random / block / subcaption);
- :mod:`.recipes`: text-source recipes (clips, clip-web, clip-synthetic-full/partial, mixture);
- :mod:`.data`: sources (webdataset, parquet, JSONL), worker-side decoding, bad-sample counts,
  exact-resume streams, shard writing;
- :mod:`.losses`, :mod:`.objective`: CLIP / SigLIP / CLIPS losses over the global batch;
- :mod:`.engines`, :mod:`.distributed`: DDP / FSDP2 / DeepSpeed;
- :mod:`.optim`, :mod:`.checkpointing`, :mod:`.metrics`, :mod:`.trainer`: the loop;
- :mod:`.config`: typed YAML configs (reference configs in ``pretrain/configs``);
- :mod:`.synthetic`: a procedural image/caption dataset for tests and the demo.

    from pretrain.config import load_config
    from pretrain.trainer import train
    train(load_config("clips-tiny", ["--data.train", "data/tiny"]))
"""
