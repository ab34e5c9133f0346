"""Build the tiny models the real-vLLM tests serve, in seconds, with no hub.

Runs in the vLLM venv (torch + transformers):  python tests/vllm/build_models.py OUT_DIR

OUT_DIR/tokenizer  a byte-level BPE tokenizer trained here on the synthetic corpus. Like
                   GPT-2 and SmolLM2, it splits "\\n\\n" before text into two "\\n" tokens but
                   keeps a trailing "\\n\\n" as one merged token: the boundary trap of
                   docs/design.md, section 6, reproduced on purpose. Its tokenizer adds a BOS
                   and its ChatML-like template writes one too (the doubled-BOS trap).
OUT_DIR/policy     a 2-layer Llama (hidden 128, 4 heads: the CPU attention backend needs head
                   size >= 32) trained briefly to write "Step k: ...\\n\\n" steps ending in
                   "The answer is $\\boxed{N}$." and to judge steps with "+" / "-". It learns
                   its solutions under two chat templates: the ChatML-like one above and
                   TRIMMING_TEMPLATE, Llama-3-style, which trims message bodies.
OUT_DIR/tokenizer-trimming  the same tokenizer with TRIMMING_TEMPLATE and <|eot_id|> as EOS, as
                   Llama 3.x ships it: serve the policy with --tokenizer pointing here.
OUT_DIR/prm        a `Qwen2ForProcessRewardModel` (num_labels 2, random weights) over the same
                   tokenizer; serve it with --pooler-config '{"step_tag_id": <id of <extra_0>>}'
                   (OUT_DIR/prm/step_tag.json holds the id).

Everything is seeded; OUT_DIR is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

BOS, EOS, IM_START, STEP_TAG, PAD = "<s>", "<|im_end|>", "<|im_start|>", "<extra_0>", "<pad>"
HEADER_START, HEADER_END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama 3.x's shape: BOS, header tokens, the body through `| trim`, <|eot_id|> with no newline.
# One "\\n" after the header where Llama 3 has two: this GPT-2-style tokenizer encodes a
# trailing "\\n\\n" (the generation prompt) as one token but "\\n\\n" before text as two, a
# boundary Llama 3's own tokenizer does not have there.
TRIMMING_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n' + m['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n' }}"
    "{% endif %}"
)
# DEFAULT_SYSTEM_PROMPT of asynctts (kept in sync by a test): the tests solve with it.
SYSTEM_PROMPT = (
    "Solve the following math problem efficiently and clearly:\n\n"
    "- For simple problems (2 steps or fewer):\n"
    "Provide a concise solution with minimal explanation.\n\n"
    "- For complex problems (3 steps or more):\n"
    "Use this step-by-step format:\n\n"
    "## Step 1: [Concise description]\n"
    "[Brief explanation and calculations]\n\n"
    "## Step 2: [Concise description]\n"
    "[Brief explanation and calculations]\n\n"
    "...\n\n"
    "Regardless of the approach, always conclude with:\n\n"
    "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct.\n\n"
    "Where [answer] is just the final number or expression that solves the problem."
)
VOCAB_SIZE = 640
HIDDEN = 128
HEADS = 4
LAYERS = 2
MAX_LEN = 2048
# One shape for both tiny models (the policy is trained, the PRM only has to run).
SHAPE: dict[str, int | bool] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 4 * HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": HEADS,
    "max_position_embeddings": MAX_LEN,
    "tie_word_embeddings": False,
}
TRAIN_STEPS = 300
BATCH = 16


def problem_and_steps(rng: random.Random) -> tuple[str, list[str], int]:
    """An arithmetic problem, its steps (each ending in "\\n\\n" but the last) and answer."""
    terms = [rng.randint(1, 30) for _ in range(rng.randint(2, 4))]
    ops = [rng.choice("+-") for _ in terms[1:]]
    expression = str(terms[0]) + "".join(f" {op} {t}" for op, t in zip(ops, terms[1:], strict=True))
    problem = rng.choice(["What is {}?", "Compute ${}$.", "Find the value of ${}$."]).format(
        expression
    )
    steps, total = [], terms[0]
    for k, (op, term) in enumerate(zip(ops, terms[1:], strict=True), start=1):
        new = total + term if op == "+" else total - term
        steps.append(f"Step {k}: {total} {op} {term} = {new}.\n\n")
        total = new
    steps.append(f"The answer is $\\boxed{{{total}}}$.")
    return problem, steps, total


def render(messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE in Python (checked against the template in build_tokenizer)."""
    text = BOS
    for m in messages:
        text += f"{IM_START}{m['role']}\n{m['content']}{EOS}\n"
    return text + (f"{IM_START}assistant\n" if generation_prompt else "")


def render_trimming(messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    """TRIMMING_TEMPLATE in Python (checked against the template in build_tokenizer)."""
    text = BOS
    for m in messages:
        text += f"{HEADER_START}{m['role']}{HEADER_END}\n{m['content'].strip()}{EOT}"
    return text + (f"{HEADER_START}assistant{HEADER_END}\n" if generation_prompt else "")


def corpus(rng: random.Random, size: int) -> list[str]:
    """Solutions (with and without the system prompt) and "+"/"-" step judgements."""
    texts = []
    for i in range(size):
        problem, steps, _ = problem_and_steps(rng)
        if i % 4 == 3:  # a judge conversation: a wrong step gets "-"
            messages = []
            for k, step in enumerate(steps):
                body = step.strip()
                wrong = rng.random() < 0.3 and "=" in body
                if wrong:
                    body = body.replace("= ", f"= {rng.randint(1, 9)}", 1)
                content = f"{problem} {body}" if k == 0 else body
                messages += [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": "-" if wrong else "+"},
                ]
            texts.append(render(messages))
            continue
        messages = [{"role": "user", "content": problem}]
        if i % 4 != 2:
            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        if (i // 4) % 2:  # half the solutions under each template
            prompt, end = render_trimming(messages, generation_prompt=True), EOT
        else:
            prompt, end = render(messages, generation_prompt=True), EOS + "\n"
        texts.append(prompt + "".join(steps) + end)
    return texts


def build_tokenizer(texts: list[str], out: Path, trimming_out: Path) -> object:
    """Writes the tokenizer to `out` and its trimming-template twin to `trimming_out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, IM_START, STEP_TAG, HEADER_START, HEADER_END, EOT]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Single steps end in "\n\n", so the merged "\n\n" token exists (the boundary trap).
    steps = [s for t in texts for s in t.split("\n\n") if s]
    tok.train_from_iterator(texts + [s + "\n\n" for s in steps[:2000]], trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizers = {}
    for template, eos, path in ((CHAT_TEMPLATE, EOS, out), (TRIMMING_TEMPLATE, EOT, trimming_out)):
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=BOS,
            eos_token=eos,
            pad_token=PAD,
            additional_special_tokens=[
                t for t in (EOS, IM_START, STEP_TAG, HEADER_START, HEADER_END, EOT) if t != eos
            ],
            model_max_length=MAX_LEN,
        )
        fast.chat_template = template
        fast.save_pretrained(path)
        tokenizers[template] = fast
    _check_templates(tokenizers[CHAT_TEMPLATE], tokenizers[TRIMMING_TEMPLATE])
    return tokenizers[CHAT_TEMPLATE]


def _check_templates(chatml: object, trimming: object) -> None:
    """The Python renderers the corpus uses are the templates the servers apply."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What is 1 + 2?"},
    ]
    for tokenizer, python_render in ((chatml, render), (trimming, render_trimming)):
        for generation_prompt in (False, True):
            rendered = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
            expected = python_render(messages, generation_prompt)
            if rendered != expected:
                raise SystemExit(f"template and renderer differ:\n{rendered!r}\n{expected!r}")


def train_policy(tokenizer: object, texts: list[str], out: Path) -> float:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    pad_id = tokenizer.pad_token_id  # type: ignore[attr-defined]
    eos_id = tokenizer.eos_token_id  # type: ignore[attr-defined]
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        **SHAPE,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = LlamaForCausalLM(config)
    # The texts already hold their BOS (the template writes it): no second one.
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # type: ignore[operator]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=TRAIN_STEPS, pct_start=0.1
    )
    rng = random.Random(1)
    loss_value = float("nan")
    model.train()
    for _ in range(TRAIN_STEPS):
        batch = rng.sample(encoded, BATCH)
        width = max(map(len, batch))
        ids = torch.full((BATCH, width), pad_id)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
        labels = ids.masked_fill(ids == pad_id, -100)
        loss = model(input_ids=ids, attention_mask=(ids != pad_id).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        loss_value = float(loss.detach())
    model.save_pretrained(out, safe_serialization=True)
    # Both turn ends stop a generation, as Llama 3.x lists several EOS ids.
    eot_id = tokenizer.convert_tokens_to_ids(EOT)  # type: ignore[attr-defined]
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[eos_id, eot_id], pad_token_id=pad_id
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return loss_value


def build_prm(tokenizer: object, out: Path) -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(2)
    config = Qwen2Config(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        **SHAPE,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
    )
    backbone = Qwen2Model(config)
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    tensors["score.0.weight"] = torch.randn(HIDDEN, HIDDEN) * 0.05
    tensors["score.0.bias"] = torch.zeros(HIDDEN)
    tensors["score.2.weight"] = torch.randn(2, HIDDEN) * 0.05
    tensors["score.2.bias"] = torch.zeros(2)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    settings = config.to_dict()
    settings.update(architectures=["Qwen2ForProcessRewardModel"], num_labels=2)
    (out / "config.json").write_text(json.dumps(settings, indent=2))
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    step_tag_id = int(tokenizer.convert_tokens_to_ids(STEP_TAG))  # type: ignore[attr-defined]
    (out / "step_tag.json").write_text(json.dumps({"step_tag": STEP_TAG, "id": step_tag_id}))
    return step_tag_id


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/vllm/build_models.py OUT_DIR")
    out = Path(sys.argv[1])
    if out.exists():
        raise SystemExit(f"{out} exists")
    started = time.monotonic()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    texts = corpus(random.Random(0), 4000)
    tokenizer = build_tokenizer(texts, partial / "tokenizer", partial / "tokenizer-trimming")
    loss = train_policy(tokenizer, texts, partial / "policy")
    step_tag_id = build_prm(tokenizer, partial / "prm")
    partial.rename(out)
    sys.stdout.write(
        f"built {out} in {time.monotonic() - started:.0f} s: policy loss {loss:.3f}, "
        f"step tag id {step_tag_id}\n"
    )


if __name__ == "__main__":
    main()
