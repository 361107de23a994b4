"""The vicuna-v1 chat template of LLaVA-1.5 as a Jinja string for HF tokenizers and processors.

A leaf module (no imports): the strings of LLaVA's ``v1`` conversation live here, and both the
training conversation (:data:`llava_integration.conversation.VICUNA_V1`) and the evaluation
adapter (:mod:`eval.lmms.adapter`) read them from here, so evaluation depends on the folder
format only, not on the training code.

Renders exactly what LLaVA's ``v1`` conversation (``conv_vicuna_v1``) writes:
``"<system> USER: <image>\\n<question> ASSISTANT: <answer></s>USER: ... ASSISTANT:"``, without
BOS: as in the HF LLaVA-1.5 folders (``llava-hf/llava-1.5-7b-hf``), the processor / tokenizer call
adds it, which is what lmms-eval's ``llava_hf`` and transformers' documented
``processor(text=processor.apply_chat_template(...))`` rely on (a template that wrote BOS itself
would give those callers two). Messages follow the HF format: ``content`` is a string or a list of
``{"type": "image"}`` / ``{"type": "text", "text": ...}`` items; a turn's images come first, one
``<image>\\n`` each. A leading ``system`` message replaces the default system prompt.
"""

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
VICUNA_ROLES = ("USER", "ASSISTANT")
VICUNA_SEP = " "  # after the system prompt and each question; answers end with the EOS token


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_USER, _ASSISTANT = VICUNA_ROLES
VICUNA_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string"
    " else messages[0]['content'][0]['text'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = " + _jinja_str(VICUNA_SYSTEM) + " -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- system + " + _jinja_str(VICUNA_SEP) + " -}}"
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
    "{%- if message['role'] == 'user' -%}{{- " + _jinja_str(VICUNA_SEP) + " -}}"
    "{%- else -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- " + _jinja_str(_ASSISTANT + ":") + " -}}{%- endif -%}"
)
