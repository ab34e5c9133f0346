"""Tokenizers built locally (no hub): a tiny byte-level BPE wrapped as a transformers fast
tokenizer, saved and loaded back through `load_tokenizer`, with a Llama-3-like chat template
(BOS written by the template, message bodies trimmed) or a ChatML (Qwen-like) one."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from asynctts.backends.templates import load_tokenizer

BOS = "<|begin_of_text|>"
SPECIALS = [
    BOS,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<extra_0>",
]
LLAMA_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
CORPUS = [
    "What is 1+1? Step 1: add the numbers 1 and 1.\n\nStep 2: so the answer is $\\boxed{2}$.\n\n",
    "system user assistant + - Please reason step by step, and put your final answer within",
] * 20


def build_tokenizer(
    directory: Path, *, template: str | None, adds_bos: bool, name: str
) -> PreTrainedTokenizerBase:
    """Train a tiny byte-level BPE, wrap it, save it and load it back through load_tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
        )
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=BOS if adds_bos or template == LLAMA_TEMPLATE else None,
        eos_token="<|eot_id|>",
        chat_template=template,
    )
    path = directory / name
    wrapped.save_pretrained(path)
    return load_tokenizer(str(path))
