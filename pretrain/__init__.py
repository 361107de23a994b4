"""pretrain: CLIPS pretraining (and the CLIP baselines of the paper's comparison).

- :mod:`.sampling`: token-reduction strategies (truncate / random / block / subcaption);
- :mod:`.recipes`: text-source recipes (clips, clip-web, clip-synthetic-full/partial, mixture);
- :mod:`.data`: sources (webdataset, parquet, JSONL), worker-side decoding, bad-sample counts,
  exact-resume streams, shard writing;
- :mod:`.losses`, :mod:`.objective`: CLIP / SigLIP / CLIPS losses over the global batch;
- :mod:`.engines`, :mod:`.distributed`: DDP / FSDP2 / DeepSpeed behind one ``Engine`` protocol;
- :mod:`.step`: one optimisation step (forward, loss, backward, NaN/Inf policy, update);
- :mod:`.trainer`: the loop (stages, logging, eval and checkpoint cadence); :mod:`.checkpointing`:
  checkpoint folders and the run state saved in them; :mod:`.optim`, :mod:`.metrics`;
- :mod:`.config`: typed YAML configs (reference configs in ``pretrain/configs``);
- :mod:`.synthetic`: a procedural image/caption dataset for tests and the demo.

    from pretrain.config import load_config
    from pretrain.trainer import train
    train(load_config("clips-tiny", ["--data.train", "data/tiny"]))
"""
