"""Training data: sources (:mod:`.sources`), worker-side decoding and caption sampling
(:mod:`.decode`), bad-sample reasons (:mod:`.errors`), the resumable sharded stream
(:mod:`.stream`), shard writing (:mod:`.shards`) and ``clips data shard`` (:mod:`.convert`)."""
