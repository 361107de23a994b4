"""lmms-eval plug-in: the ``clips_llava`` model adapter and local benchmark-shaped tasks.

- :mod:`eval.lmms.adapter`: ``ClipsLlava``, lmms-eval's model for any HF-native LLaVA folder.
- :mod:`eval.lmms.plugin`: the ``lmms_eval.models`` entry point that registers it.
- :mod:`eval.lmms.taskdata`: synthetic POPE / GQA / MMBench-shaped data (coloured shapes).
- :mod:`eval.lmms.tasks`: the task YAMLs and their ``doc_to_*`` / metric functions.
- :mod:`eval.lmms.hf_layout`: local datasets in the HF layout of lmms-eval's own pope/gqa/mme/mmbench.
- :mod:`eval.lmms.runner`: installs the task YAMLs next to a data folder and runs lmms-eval's CLI.

Nothing here imports lmms-eval until lmms-eval loads the adapter.
"""
