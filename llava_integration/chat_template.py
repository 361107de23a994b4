"""The vicuna-v1 chat template of LLaVA-1.5 as a Jinja string for HF tokenizers and processors.

Renders ``bos_token`` followed by exactly what LLaVA's ``v1`` conversation template writes
(:data:`llava_integration.conversation.VICUNA_V1`, LLaVA's ``conv_vicuna_v1``):
``"<s><system> USER: <image>\\n<question> ASSISTANT: <answer></s>USER: ... ASSISTANT:"``.
Starting with BOS is the HF convention: processors and ``apply_chat_template`` then do not add
another one. Messages follow the HF format: ``content`` is a string or a list of
``{"type": "image"}`` / ``{"type": "text", "text": ...}`` items; a turn's images come first,
one ``<image>\\n`` each. A leading ``system`` message replaces the default system prompt.
"""

from .conversation import VICUNA_V1

_USER, _ASSISTANT = VICUNA_V1.roles


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


VICUNA_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string"
    " else messages[0]['content'][0]['text'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = " + _jinja_str(VICUNA_V1.system) + " -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- bos_token + system + " + _jinja_str(VICUNA_V1.sep) + " -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{{- " + _jinja_str(_USER + ": ") + " -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- " + _jinja_str(_ASSISTANT + ": ") + " -}}"
    "{%- else -%}{{- raise_exception('vicuna template: roles must be user/assistant after an optional system message') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- " + _jinja_str(VICUNA_V1.sep) + " -}}"
    "{%- else -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- " + _jinja_str(_ASSISTANT + ":") + " -}}{%- endif -%}"
)
