"""The built-in end-to-end demo (``clips demo``): the paper's story at laptop scale.

    from clips_cli.demo_pipeline import get_settings, run_demo
    metrics = run_demo("demo_out", get_settings("quick"), seed=0)

Modules, one per step: :mod:`.data` (generate), :mod:`.pretraining` (four recipes),
:mod:`.retrieval` (table + chart), :mod:`.captioner` (examples), :mod:`.llava` (two towers through
LLaVA and lmms-eval), :mod:`.report`; :mod:`.pipeline` runs them in order.
"""

from .pipeline import run_demo
from .settings import PRESETS, DemoSettings, get_settings

__all__ = ["PRESETS", "DemoSettings", "get_settings", "run_demo"]
