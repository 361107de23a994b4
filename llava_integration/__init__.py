"""CLIPS vision encoders inside LLaVA.

    from llava_integration.towers import load_vision_tower      # a tower for the original ``llava`` package
    from llava_integration.assemble import assemble_llava         # HF LlavaForConditionalGeneration

Modules: ``towers`` (tower kinds behind one interface: clips / HF CLIP / SigLIP), ``image_processing``,
``hf_export`` (a CLIPS ViT as a stock ``ViTModel``), ``export`` (a tower saved as an HF folder), ``assemble``, ``original_llava`` (patching
the ``llava`` package's builder), ``tiny_llm`` (offline tiny Llama for tests and the demo),
``conversation`` + ``chat_template`` + ``data`` (LLaVA-format data, label masking), ``stages`` +
``train_args`` + ``train`` + ``feature_cache`` (projector pretraining and instruction tuning),
``cli`` / ``tower_cli`` / ``train_cli`` (``clips llava ...``). Heavy dependencies load on demand.
"""
