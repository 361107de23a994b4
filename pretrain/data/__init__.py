"""Training data, and the project's one data layer: sources and shard specs (:mod:`.sources`, also
read by eval), worker-side decoding and caption sampling (:mod:`.decode`), the one bad-sample
vocabulary and image-extension list (:mod:`.errors`, also used by eval and LLaVA), the resumable
sharded stream (:mod:`.stream`), shard writing (:mod:`.shards`) and ``clips data shard``
(:mod:`.convert`)."""
