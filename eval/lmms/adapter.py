"""lmms-eval model ``clips_llava``: any HF-native LLaVA folder (``LlavaForConditionalGeneration`` +
its ``LlavaProcessor`` and chat template), e.g. the folders ``clips llava assemble|finetune`` write::

    python -m lmms_eval --model clips_llava --model_args pretrained=DIR,dtype=bfloat16 --tasks pope

Prompts: the task's context becomes the user turn (one ``<image>`` per visual in front of the text
unless the context places them itself) rendered with the folder's chat template (or
``chat_template=vicuna_v1`` / a ``.jinja`` file) and its generation prompt.

- ``generate_until``: batched (left padding), grouped by ``generation_kwargs``; see
  :class:`GenerationSettings` for how they map onto ``generate``.
- ``loglikelihood``: returns ``(-log P(continuation | prompt), is_greedy)`` summed over the
  continuation's tokens. lmms-eval 0.7.3 scores ``multiple_choice`` tasks with the *argmin* of
  these values (its own LLaVA adapters return the mean token loss), so argmin = most probable.
  lmms-eval 0.7.3 stringifies these pairs on their way to the task;
  :func:`keep_loglikelihood_pairs` (run by the constructor) works around it.
- ``generate_until_multi_round``: lmms-eval's protocol: after each round the task's
  ``doc_to_text(doc, previous_output=, round_idx=, previous_round_info=)`` returns the next
  ``(visuals, context, done, round_results, info)``; the result is ``round_results`` at ``done``.

Nothing is swallowed: an error in a visual, the prompt, preprocessing or the model propagates
(lmms-eval's ``llava_hf`` turns generation errors into empty answers, i.e. silent zero scores).
Constructor arguments come from ``--model_args`` plus lmms-eval's ``batch_size``/``device``.
"""

from __future__ import annotations

import inspect
import json
from collections import defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from llava_integration.chat_template import VICUNA_CHAT_TEMPLATE

# Named chat templates for folders that ship none (``chat_template=<name>``).
CHAT_TEMPLATES = {"vicuna_v1": VICUNA_CHAT_TEMPLATE}
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# generation_kwargs of lmms-eval tasks meant for the original llava package's preprocessing; the HF
# processor fixes preprocessing, so they do not apply.
IGNORED_GEN_KWARGS = frozenset({"image_aspect_ratio"})


@dataclass(frozen=True)
class GenerationSettings:
    """A task's ``generation_kwargs`` as HF ``generate`` arguments.

    Sampling follows HF: ``do_sample`` decides; a task that does not set it samples iff
    ``temperature > 0`` (LLaVA's convention). ``top_p``/``top_k`` apply only when sampling.
    ``until``: stop strings; the answer is cut before the first one. Unknown keys are an error.
    """

    max_new_tokens: int = 1024
    do_sample: bool | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int = 1
    repetition_penalty: float | None = None
    until: tuple[str, ...] = ()

    @classmethod
    def from_gen_kwargs(cls, gen_kwargs: dict[str, Any], where: str) -> GenerationSettings:
        """Parse ``gen_kwargs`` (``where`` names the task in errors)."""
        kwargs = {k: v for k, v in gen_kwargs.items() if k not in IGNORED_GEN_KWARGS}
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"clips_llava: {where}: generation_kwargs {unknown} are not supported (supported: {known})")
        until = kwargs.pop("until", ())
        until = (until,) if isinstance(until, str) else until
        if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) and u for u in until):
            raise ValueError(f"clips_llava: {where}: generation_kwargs 'until' must be a non-empty string or a list "
                             f"of them, got {until!r}")
        settings = cls(**kwargs, until=tuple(until))
        if settings.sample and not settings.temperature > 0:
            raise ValueError(f"clips_llava: {where}: do_sample=true needs temperature > 0, got {settings.temperature}")
        return settings

    @property
    def sample(self) -> bool:
        """Whether generation samples (else greedy or beam search)."""
        return self.temperature > 0 if self.do_sample is None else bool(self.do_sample)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (sampling fields set to None when greedy, which
        overrides sampling defaults in the model's ``generation_config``)."""
        sampling = {"temperature": float(self.temperature), "top_p": self.top_p, "top_k": self.top_k}
        return {"max_new_tokens": int(self.max_new_tokens), "num_beams": int(self.num_beams), "do_sample": self.sample,
                "repetition_penalty": self.repetition_penalty,
                **(sampling if self.sample else dict.fromkeys(sampling))}

    def cut(self, text: str) -> str:
        """``text`` up to the first stop string."""
        for stop in self.until:
            text = text.split(stop, 1)[0]
        return text


def resolve_chat_template(chat_template: str | None, processor: Any, pretrained: str) -> str:
    """The Jinja chat template to use: the folder's own (None), a name in :data:`CHAT_TEMPLATES`,
    or the text of a template file."""
    if chat_template is None:
        own = getattr(processor, "chat_template", None)
        if not isinstance(own, str) or not own:
            raise ValueError(f"clips_llava: {pretrained} has no chat template; pass chat_template=vicuna_v1 "
                             f"(LLaVA-1.5) or chat_template=<file.jinja>")
        return own
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    if Path(chat_template).is_file():
        return Path(chat_template).read_text(encoding="utf-8")
    raise ValueError(f"clips_llava: chat_template={chat_template!r} is neither a known template "
                     f"({sorted(CHAT_TEMPLATES)}) nor a file")


def keep_loglikelihood_pairs() -> bool:
    """Work around lmms-eval 0.7.3 turning every log-likelihood result into a string.

    Its evaluator passes each response through ``unwrap_generation_output``, which returns
    ``str(output)`` for anything but text, so ``(-3.2, False)`` reaches the task as
    ``"(-3.2, False)"`` and every ``multiple_choice`` task fails. If the installed lmms-eval has
    that behaviour, its evaluator's reference is replaced by one that passes ``(number, bool)``
    pairs through unchanged and defers everything else to the original. Returns whether it patched.
    """
    from lmms_eval import evaluator

    unwrap = evaluator.unwrap_generation_output
    if unwrap((0.0, True))[0] == (0.0, True):
        return False  # fixed (or already patched)

    def unwrap_keeping_pairs(output: Any) -> tuple[Any, Any]:
        if (isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[0], (int, float))
                and isinstance(output[1], bool)):
            return tuple(output), None
        return unwrap(output)

    evaluator.unwrap_generation_output = unwrap_keeping_pairs
    return True


def _task_key(args: tuple) -> str:
    """Groups generation requests with equal ``generation_kwargs`` (args[1])."""
    return json.dumps(args[1], sort_keys=True, default=str)


class ClipsLlava(lmms):
    """An HF LLaVA folder as an lmms-eval model (see the module docstring).

    ``pretrained``: folder (or hub id where downloads are possible) of a ``model_type: llava``
    model; ``device``: default ``cuda`` if available, else ``cpu`` (one device per process under
    ``accelerate launch``); ``dtype``: ``auto`` (the saved one) | ``float32`` | ``bfloat16`` |
    ``float16``; ``batch_size``: requests per forward pass; ``chat_template``: override (see
    :func:`resolve_chat_template`); ``attn_implementation``: passed to ``from_pretrained``.
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "auto", batch_size: int | str = 1,
                 chat_template: str | None = None, attn_implementation: str | None = None, use_cache: bool = True,
                 **unknown: Any) -> None:
        super().__init__()
        keep_loglikelihood_pairs()
        if unknown:
            accepted = [p for p in inspect.signature(ClipsLlava.__init__).parameters if p not in ("self", "unknown")]
            raise ValueError(f"clips_llava: unknown model_args {sorted(unknown)}; accepted: {accepted}")
        from accelerate import Accelerator
        from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

        if str(dtype) not in DTYPES:
            raise ValueError(f"clips_llava: dtype={dtype!r}; choose from {sorted(DTYPES)}")
        try:
            self._batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"clips_llava: batch_size={batch_size!r}; pass an integer (no 'auto')") from None
        if self._batch_size < 1:
            raise ValueError(f"clips_llava: batch_size must be >= 1, got {self._batch_size}")
        pretrained = str(pretrained)
        model_type = AutoConfig.from_pretrained(pretrained).model_type
        if model_type != "llava":
            raise ValueError(f"clips_llava: {pretrained} holds a {model_type!r} model; clips_llava evaluates "
                             f"LlavaForConditionalGeneration folders (model_type 'llava')")
        accelerator = Accelerator()
        if accelerator.num_processes > 1:  # data parallel: lmms-eval shards the requests by rank
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            self._device = accelerator.device
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model = LlavaForConditionalGeneration.from_pretrained(
            pretrained, dtype=DTYPES[str(dtype)], attn_implementation=attn_implementation).to(self._device).eval()
        self._processor = AutoProcessor.from_pretrained(pretrained)
        self.chat_template = resolve_chat_template(chat_template, self._processor, pretrained)
        self.image_token = getattr(self._processor, "image_token", "<image>")
        tokenizer = self._processor.tokenizer
        if tokenizer.pad_token is None:  # batching pads; LLaVA pads Vicuna/Llama tokenizers with <unk>
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        self._pad_id = tokenizer.pad_token_id
        self.use_cache = bool(use_cache)
        self.pretrained = pretrained
        self._logged_tasks: set[str] = set()
        eval_logger.info(f"clips_llava: {pretrained} ({self._model.dtype}) on {self._device}, batch size {self._batch_size}")

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def processor(self) -> Any:
        return self._processor

    @property
    def tokenizer(self) -> Any:
        return self._processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    # ------------------------------------------------------------------ prompts and inputs

    def render_prompt(self, context: str, num_images: int) -> str:
        """The chat-formatted prompt (user turn + generation prompt) for ``context`` with
        ``num_images`` images: in front of the text, or where the context has ``<image>``."""
        pieces = context.split(self.image_token)
        if len(pieces) == 1:
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": context}]
        elif len(pieces) - 1 == num_images:
            content = []
            for k, piece in enumerate(pieces):
                content += [{"type": "image"}] if k else []
                content += [{"type": "text", "text": piece.strip()}] if piece.strip() else []
        else:
            raise ValueError(f"clips_llava: the context has {len(pieces) - 1} {self.image_token} placeholders "
                             f"but {num_images} images: {context[:200]!r}")
        return self._processor.apply_chat_template([{"role": "user", "content": content}], chat_template=self.chat_template,
                                                   add_generation_prompt=True, tokenize=False)

    def _images(self, doc_to_visual: Callable | None, task: str, split: str, doc_id: int) -> list[Image.Image]:
        """The doc's visuals; anything but PIL images is an error (LLaVA takes images)."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        return self._check_images(visuals, f"{task} doc {doc_id}")

    @staticmethod
    def _check_images(visuals: Sequence | None, where: str) -> list[Image.Image]:
        visuals = [] if visuals is None else list(visuals)
        bad = sorted({type(v).__name__ for v in visuals if not isinstance(v, Image.Image)})
        if bad:
            raise TypeError(f"clips_llava: {where}: visuals must be PIL images, got {bad}")
        return [v.convert("RGB") for v in visuals]

    def _encode(self, prompts: list[str], images: list[Image.Image], padding_side: str) -> Any:
        """Tokenised prompts (``<image>`` expanded) + ``pixel_values`` in the model's dtype, on device.
        A template that writes BOS itself gets no second one from the tokenizer."""
        bos = self.tokenizer.bos_token
        add_special_tokens = not (bos and all(p.startswith(bos) for p in prompts))
        enc = self._processor(text=prompts, images=images or None, return_tensors="pt", padding=True,
                              padding_side=padding_side, add_special_tokens=add_special_tokens).to(self._device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self._model.dtype)
        return enc

    def _batches(self, requests: Sequence[Instance], key: Callable[[tuple], str]) -> Iterator[list[int]]:
        """Request indices in batches of ``batch_size``: grouped by ``key(args)``, longest context first."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[key(r.args)].append(i)
        for indices in groups.values():
            indices.sort(key=lambda i: -len(requests[i].args[0]))
            for start in range(0, len(indices), self._batch_size):
                yield indices[start:start + self._batch_size]

    # ------------------------------------------------------------------ generation

    def _generate(self, prompts: list[str], images: list[list[Image.Image]], settings: GenerationSettings) -> list[str]:
        """Generate one answer per rendered prompt (with its images) in one batch."""
        enc = self._encode(prompts, [im for ims in images for im in ims], "left")
        stops = {"stop_strings": list(settings.until), "tokenizer": self.tokenizer} if settings.until else {}
        with torch.inference_mode():
            out = self._model.generate(**enc, **settings.generate_kwargs(), pad_token_id=self._pad_id,
                                       use_cache=self.use_cache, **stops)
        texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [settings.cut(t) for t in texts]

    def _prompt(self, context: str, images: list[Image.Image], task: str) -> str:
        """:meth:`render_prompt`; the first prompt of each task is logged, to check the template."""
        prompt = self.render_prompt(context, len(images))
        if task not in self._logged_tasks:
            self._logged_tasks.add(task)
            eval_logger.info(f"clips_llava: first prompt of {task}: {prompt!r}")
        return prompt

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Args per request: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""
        results: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=self.rank != 0, desc="clips_llava generate") as bar:
            for batch in self._batches(requests, _task_key):
                _, gen_kwargs, _, _, task, _ = requests[batch[0]].args
                settings = GenerationSettings.from_gen_kwargs(gen_kwargs, task)
                prompts, images = [], []
                for i in batch:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    images.append(self._images(doc_to_visual, task, split, doc_id))
                    prompts.append(self._prompt(context, images[-1], task))
                for i, text in zip(batch, self._generate(prompts, images, settings)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], text)
                bar.update(len(batch))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Args per request: ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``;
        returns each doc's final ``round_results`` (see the module docstring)."""
        results: list[Any] = [None] * len(requests)
        with tqdm(total=len(requests), disable=self.rank != 0, desc="clips_llava multi-round") as bar:
            for batch in self._batches(requests, _task_key):
                _, gen_kwargs, _, _, _, task, _ = requests[batch[0]].args
                settings = GenerationSettings.from_gen_kwargs(gen_kwargs, task)
                state, history, info = {}, {i: [] for i in batch}, dict.fromkeys(batch)
                for i in batch:
                    context, _, doc_to_visual, _, doc_id, task, split = requests[i].args
                    images = self._images(doc_to_visual, task, split, doc_id)
                    state[i] = (self._prompt(context, images, task), images)
                active, round_idx = list(batch), 0
                while active:
                    texts = self._generate([state[i][0] for i in active], [state[i][1] for i in active], settings)
                    for i, text in zip(active, texts):
                        history[i].append(text)
                    round_idx += 1
                    still_active = []
                    for i in active:
                        _, _, _, doc_to_text, doc_id, task, split = requests[i].args
                        visuals, context, done, round_results, info[i] = doc_to_text(
                            self.task_dict[task][split][doc_id], previous_output=history[i], round_idx=round_idx,
                            previous_round_info=info[i])
                        if done:
                            results[i] = round_results
                        else:
                            history[i] = list(round_results)
                            images = self._check_images(visuals, f"{task} doc {doc_id} round {round_idx}")
                            state[i] = (self._prompt(context, images, task), images)
                            still_active.append(i)
                    active = still_active
                bar.update(len(batch))
        return results

    # ------------------------------------------------------------------ log-likelihood

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Args per request: ``(context, continuation or doc_to_target, doc_to_visual, doc_id, task,
        split)``; returns ``(-sum log P(continuation tokens | prompt), continuation is greedy)``."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=self.rank != 0, desc="clips_llava loglikelihood") as bar:
            for batch in self._batches(requests, lambda args: ""):
                prompts, continuations, images = [], [], []
                for i in batch:
                    if len(requests[i].args) != 6:
                        raise ValueError("clips_llava: loglikelihood requests without a doc (e.g. the unconditional "
                                         "ones of acc_mutual_info) are not supported")
                    context, target, doc_to_visual, doc_id, task, split = requests[i].args
                    continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                    if not isinstance(continuation, str) or not continuation:
                        raise ValueError(f"clips_llava: {task} doc {doc_id}: the continuation must be a non-empty string, "
                                         f"got {continuation!r}")
                    images.append(self._images(doc_to_visual, task, split, doc_id))
                    prompts.append(self._prompt(context, images[-1], task))
                    continuations.append(continuation)
                scores = self._continuation_scores(prompts, continuations, images)
                for i, score in zip(batch, scores):
                    results[i] = score
                    self.cache_hook.add_partial("loglikelihood", requests[i].args[:2], score)
                bar.update(len(batch))
        return results

    def _continuation_scores(self, prompts: list[str], continuations: list[str],
                             images: list[list[Image.Image]]) -> list[tuple[float, bool]]:
        """One forward pass over ``prompt + continuation`` (right padding) for the whole batch; the
        prompts alone are tokenised too, to find where each continuation starts."""
        flat = [im for ims in images for im in ims]
        full = self._encode([p + c for p, c in zip(prompts, continuations)], flat, "right")
        context = self._encode(prompts, flat, "right")
        with torch.inference_mode():
            logits = self._model(**full).logits
        scores = []
        for row, (prompt, continuation) in enumerate(zip(prompts, continuations)):
            n_ctx, n_all = int(context["attention_mask"][row].sum()), int(full["attention_mask"][row].sum())
            ids = full["input_ids"][row, :n_all]
            if n_all <= n_ctx or not torch.equal(ids[:n_ctx], context["input_ids"][row, :n_ctx]):
                raise ValueError(f"clips_llava: the continuation {continuation!r} does not tokenise as an extension "
                                 f"of the prompt ending {prompt[-40:]!r}")
            targets = ids[n_ctx:]
            logprobs = logits[row, n_ctx - 1:n_all - 1].float().log_softmax(-1)
            token_logprobs = logprobs.gather(-1, targets[:, None]).squeeze(-1)
            scores.append((-float(token_logprobs.sum()), bool((logprobs.argmax(-1) == targets).all())))
        return scores
