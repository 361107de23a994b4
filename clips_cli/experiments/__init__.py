"""Experiments beyond the demo, one module each (``clips experiment <name>``):
:mod:`.inverse_effect` (the paper's token-reduction strategy figure)."""
