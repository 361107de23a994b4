"""The generator's statistics: how often scenes carry a label and how often each caption source
omits, lies or hallucinates. ``tests/test_pretrain_synthetic.py`` measures every rate on generated
captions and checks it against the value set here (within binomial sampling error).

Why these rates: the paper's gain of CLIPS over partial synthetic captions comes from web alt-text
carrying facts an MLLM recaption lacks (names, text in the image) and from recaptions that omit
and sometimes hallucinate objects. With ``WorldConfig(0, 0, 0, 0, 0, 0)`` the synthetic caption is
complete and correct and the web caption never names a label (the previous generator).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class WorldConfig:
    """Rates of the synthetic world (probabilities in [0, 1]).

    - ``label_rate``: a scene carries a label (a named band along the bottom edge);
    - ``web_names_label``: the web caption of a labelled scene names its label (alt-text comes from
      the page: brand and product names);
    - ``web_wrong_colour``: a web caption that names an object gives it a wrong colour;
    - ``synthetic_omits_object``: per object, the synthetic caption leaves it out (every sentence,
      count included, describes only what the recaptioner "saw");
    - ``synthetic_hallucinates``: per caption, the synthetic caption adds one absent object;
    - ``synthetic_names_label``: the synthetic caption of a labelled scene names the label; otherwise
      it describes the band generically ("a coloured band along the bottom edge").
    """

    label_rate: float = 0.5
    web_names_label: float = 0.8
    web_wrong_colour: float = 0.15
    synthetic_omits_object: float = 0.2
    synthetic_hallucinates: float = 0.15
    synthetic_names_label: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"WorldConfig.{f.name} must be a probability in [0, 1], got {value}")


DEFAULT_WORLD = WorldConfig()
# Complete, correct synthetic captions and label-free scenes (the generator before labels existed).
CLEAN_WORLD = WorldConfig(0.0, 0.0, 0.15, 0.0, 0.0, 0.0)
