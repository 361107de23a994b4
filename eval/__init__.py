"""Evaluation of CLIPS models: zero-shot retrieval, zero-shot classification, captioning, reports.

    from eval.data import load_retrieval_dataset
    from eval.retrieval import evaluate_retrieval, retrieval_metrics
    dataset = load_retrieval_dataset("dataset_coco.json", image_root="coco/")
    metrics = evaluate_retrieval(model, tokenizer, dataset)      # {"i2t_R@1": ..., "mean_recall": ...}

Modules: ``data`` (retrieval sets, bad-entry checks), ``embedding`` (batched encoders),
``retrieval``, ``classification`` + ``templates``, ``captioning``, ``reports`` (JSON, markdown,
PNG), ``paper_numbers``, ``commands`` (the pipelines behind ``clips eval``), ``cli``.
Submodules are imported on demand so ``clips --help`` stays fast.
"""
