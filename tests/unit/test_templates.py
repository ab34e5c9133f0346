"""Prompt rendering against tokenizers built locally (no hub, helpers_tokenizers.py): a
Llama-3-like one (BOS added by the tokenizer and written by its template, message bodies trimmed)
and a ChatML (Qwen-like) one."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from asynctts.backends.templates import (
    PRM_SYSTEM_PROMPT,
    LogprobPrompt,
    PolicyPrompt,
    PoolingPrompt,
    PromptRenderError,
    TokenizerUnavailable,
    bare_step,
    chat_fields,
    continued_ids,
    conversation,
    load_tokenizer,
)
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError

from helpers_tokenizers import BOS, CHATML_TEMPLATE, LLAMA_TEMPLATE, build_tokenizer

PROBLEM = "What is 1+1?"
SYSTEM = "Be brief."
# an earlier solution and the request to revise it (prompted revision)
TURNS = ("Step 1: 1+1=3.\n\nThe answer is $\\boxed{3}$.", "Check your solution.")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    root = tmp_path_factory.mktemp("tok")
    return build_tokenizer(root, template=LLAMA_TEMPLATE, adds_bos=True, name="llama")


@pytest.fixture(scope="module")
def chatml(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    root = tmp_path_factory.mktemp("tok")
    return build_tokenizer(root, template=CHATML_TEMPLATE, adds_bos=False, name="chatml")


def vllm_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """How vLLM tokenizes a text prompt."""
    ids: list[int] = tokenizer(text, add_special_tokens=True)["input_ids"]
    return ids


# --- load_tokenizer -------------------------------------------------------------------------


def test_load_tokenizer_caches_per_name(llama: PreTrainedTokenizerBase) -> None:
    assert load_tokenizer(llama.name_or_path) is llama


def test_a_missing_local_path_fails_without_asking_the_hub(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(TokenizerUnavailable) as caught:
        load_tokenizer(missing)
    assert caught.value.reason == "no such local directory"
    message = str(caught.value)
    assert repr(missing) in message
    assert "tokenizer=` at a local directory" in message
    assert "prompt_format=" in message


def test_a_directory_without_tokenizer_files_says_so(tmp_path: Path) -> None:
    with pytest.raises(TokenizerUnavailable) as caught:
        load_tokenizer(str(tmp_path))
    assert caught.value.reason.startswith("the local directory does not hold a loadable tokenizer")


def test_offline_a_hub_name_fails_at_once_naming_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerUnavailable) as caught:
        load_tokenizer("acme/no-such-prm")
    assert caught.value.reason == (
        "it is neither a local directory nor in the Hugging Face cache, and the hub cannot be "
        "asked (HF_HUB_OFFLINE is set)"
    )
    assert str(caught.value).startswith("cannot load tokenizer 'acme/no-such-prm': it is neither")


def test_a_tokenizer_in_the_hugging_face_cache_loads_offline(
    chatml: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the cache's own layout: models--{org}--{name}/snapshots/{revision}, refs/main names it,
    # .no_exist/{revision} records files the repository lacks (here config.json)
    repo = tmp_path / "models--acme--cached-prm"
    chatml.save_pretrained(repo / "snapshots" / "0123abcd")
    (repo / ".no_exist" / "0123abcd").mkdir(parents=True)
    (repo / ".no_exist" / "0123abcd" / "config.json").touch()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_tokenizer.__wrapped__("acme/cached-prm")
    assert loaded.chat_template == CHATML_TEMPLATE
    assert loaded.get_vocab() == chatml.get_vocab()


def test_load_tokenizer_without_transformers_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    with pytest.raises(TokenizerUnavailable) as caught:
        load_tokenizer.__wrapped__("some/model")
    assert caught.value.reason == "transformers is not installed (pip install 'asynctts[hf]')"


# --- policy, completions mode ---------------------------------------------------------------


def test_llama_prefix_is_the_template_without_the_bos_vllm_adds(
    llama: PreTrainedTokenizerBase,
) -> None:
    prefix = PolicyPrompt(tokenizer=llama).prefix(PROBLEM, SYSTEM)
    assert prefix == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 1+1?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = vllm_ids(llama, prefix)
    assert ids[0] == llama.bos_token_id
    assert ids.count(llama.bos_token_id) == 1


def test_partial_solution_keeps_its_trailing_delimiter(llama: PreTrainedTokenizerBase) -> None:
    prompt = PolicyPrompt(tokenizer=llama)
    partial = "Step 1: add the numbers.\n\n"
    rendered = prompt.render(PROBLEM, SYSTEM, partial)
    assert rendered == prompt.prefix(PROBLEM, SYSTEM) + partial
    assert rendered.endswith("<|end_header_id|>\n\nStep 1: add the numbers.\n\n")


def test_no_system_prompt_renders_no_system_turn(llama: PreTrainedTokenizerBase) -> None:
    prefix = PolicyPrompt(tokenizer=llama).prefix(PROBLEM, None)
    assert prefix == (
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 1+1?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_chatml_prefix(chatml: PreTrainedTokenizerBase) -> None:
    prefix = PolicyPrompt(tokenizer=chatml).prefix(PROBLEM, SYSTEM)
    assert prefix == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_bos_written_by_the_template_stays_when_the_tokenizer_adds_none(
    tmp_path: Path,
) -> None:
    tokenizer = build_tokenizer(tmp_path, template=LLAMA_TEMPLATE, adds_bos=False, name="nobos")
    prefix = PolicyPrompt(tokenizer=tokenizer).prefix(PROBLEM, None)
    assert prefix.startswith(BOS + "<|start_header_id|>user")
    assert vllm_ids(tokenizer, prefix).count(tokenizer.bos_token_id) == 1


def test_prefix_is_rendered_once_per_problem_and_system(
    llama: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    original = llama.apply_chat_template

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(llama, "apply_chat_template", counting)
    prompt = PolicyPrompt(tokenizer=llama, cache_size=1)
    prompt.render(PROBLEM, SYSTEM, "a\n\n")
    prompt.render(PROBLEM, SYSTEM, "a\n\nb\n\n")
    assert len(calls) == 1
    prompt.render("Another problem", SYSTEM, "")  # evicts the first (cache_size=1)
    prompt.render(PROBLEM, SYSTEM, "")
    assert len(calls) == 3


def test_earlier_turns_are_assistant_and_user_messages_before_the_new_turn(
    chatml: PreTrainedTokenizerBase,
) -> None:
    prompt = PolicyPrompt(tokenizer=chatml)
    assert prompt.prefix(PROBLEM, SYSTEM, TURNS) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
        "<|im_start|>assistant\nStep 1: 1+1=3.\n\nThe answer is $\\boxed{3}$.<|im_end|>\n"
        "<|im_start|>user\nCheck your solution.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    partial = "Step 1: 1+1=2.\n\n"
    assert prompt.render(PROBLEM, SYSTEM, partial, TURNS) == (
        prompt.prefix(PROBLEM, SYSTEM, TURNS) + partial
    )


def test_earlier_turns_through_a_trimming_template(llama: PreTrainedTokenizerBase) -> None:
    prefix = PolicyPrompt(tokenizer=llama).prefix(PROBLEM, None, TURNS)
    assert prefix == (
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 1+1?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "Step 1: 1+1=3.\n\nThe answer is $\\boxed{3}$.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCheck your solution.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert vllm_ids(llama, prefix).count(llama.bos_token_id) == 1


def test_the_prefix_cache_keys_on_the_earlier_turns(
    chatml: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    original = chatml.apply_chat_template

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chatml, "apply_chat_template", counting)
    prompt = PolicyPrompt(tokenizer=chatml)
    other = ("Step 1: 1+1=4.\n\nThe answer is $\\boxed{4}$.", "Check your solution.")
    plain, revised, revised_other = (
        prompt.render(PROBLEM, SYSTEM, "a\n\n", turns) for turns in ((), TURNS, other)
    )
    assert len({plain, revised, revised_other}) == 3
    assert "boxed{3}" in revised and "boxed{4}" in revised_other and "boxed" not in plain
    ids = [prompt.token_ids(PROBLEM, SYSTEM, ("a\n\n",), turns) for turns in ((), TURNS, other)]
    assert ids[1] == vllm_ids(chatml, prompt.prefix(PROBLEM, SYSTEM, TURNS)) + list(
        continued_ids(chatml, "a\n\n")
    )
    assert len({tuple(i or ()) for i in ids}) == 3
    assert len(calls) == 3  # one render per (problem, system, turns), then cached
    prompt.render(PROBLEM, SYSTEM, "b\n\n", TURNS)
    assert len(calls) == 3


def test_turns_alternate_and_end_with_the_users() -> None:
    assert conversation(PROBLEM, None, TURNS) == [
        {"role": "user", "content": PROBLEM},
        {"role": "assistant", "content": TURNS[0]},
        {"role": "user", "content": TURNS[1]},
    ]
    with pytest.raises(PromptRenderError) as err:
        conversation(PROBLEM, None, TURNS[:1])
    assert str(err.value) == (
        "1 earlier turns: they alternate assistant and user and end with the user's, so their"
        " number is even"
    )


def test_policy_prompt_format() -> None:
    prompt = PolicyPrompt(prompt_format="[{system}] Q: {problem}\nA: ")
    assert prompt.render(PROBLEM, None, "x\n\n") == "[] Q: What is 1+1?\nA: x\n\n"
    assert prompt.prefix(PROBLEM, SYSTEM) == "[Be brief.] Q: What is 1+1?\nA: "


def test_policy_prompt_format_cannot_render_earlier_turns() -> None:
    prompt = PolicyPrompt(prompt_format="Q: {problem}\nA: ")
    assert not prompt.renders_turns
    with pytest.raises(ConfigError) as err:
        prompt.render(PROBLEM, SYSTEM, "", TURNS)
    assert str(err.value) == (
        "the policy's prompt_format 'Q: {problem}\\nA: ' renders one problem and one answer,"
        " not a conversation with earlier turns (a solution, then a request to revise it): use"
        " chat mode, or completions mode with a tokenizer's chat template (no prompt_format)"
    )


def test_policy_prompt_format_with_an_unknown_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'Q: \{question\}'.*KeyError\('question'\)"):
        PolicyPrompt(prompt_format="Q: {question}")


def test_policy_prompt_needs_a_tokenizer_or_a_format() -> None:
    with pytest.raises(ConfigError, match="needs a tokenizer or a prompt_format"):
        PolicyPrompt()


def test_tokenizer_without_chat_template_is_a_config_error(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path, template=None, adds_bos=False, name="plain")
    with pytest.raises(ConfigError, match="has no chat template: set `prompt_format=`"):
        PolicyPrompt(tokenizer=tokenizer)


# --- policy, chat mode ----------------------------------------------------------------------


def test_chat_fields_continue_the_partial_solution() -> None:
    assert chat_fields(PROBLEM, SYSTEM, "Step 1.\n\n") == {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": PROBLEM},
            {"role": "assistant", "content": "Step 1.\n\n"},
        ],
        "add_generation_prompt": False,
        "continue_final_message": True,
    }


def test_chat_fields_put_earlier_turns_before_the_new_assistant_turn() -> None:
    head = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROBLEM},
        {"role": "assistant", "content": TURNS[0]},
        {"role": "user", "content": TURNS[1]},
    ]
    assert chat_fields(PROBLEM, SYSTEM, "", TURNS) == {
        "messages": head,
        "add_generation_prompt": True,
        "continue_final_message": False,
    }
    assert chat_fields(PROBLEM, SYSTEM, "Step 1.\n\n", TURNS) == {
        "messages": [*head, {"role": "assistant", "content": "Step 1.\n\n"}],
        "add_generation_prompt": False,
        "continue_final_message": True,
    }


def test_chat_fields_at_the_root_open_an_assistant_turn() -> None:
    assert chat_fields(PROBLEM, None, "") == {
        "messages": [{"role": "user", "content": PROBLEM}],
        "add_generation_prompt": True,
        "continue_final_message": False,
    }


# --- pooling PRM ----------------------------------------------------------------------------


def test_bare_step_drops_the_delimiter_and_surrounding_whitespace() -> None:
    assert bare_step("Step 1: x.\n\n", "\n\n") == "Step 1: x."
    assert bare_step("  y \n\n\n\n", "\n\n") == "y"
    assert bare_step("z", "\n\n") == "z"


def test_pooling_input_has_one_tag_per_step(chatml: PreTrainedTokenizerBase) -> None:
    prompt = PoolingPrompt(step_tag="<extra_0>", tokenizer=chatml)
    rendered = prompt.render(PROBLEM, ["Step 1: add.\n\n", "So $\\boxed{2}$."])
    assert rendered == (
        f"<|im_start|>system\n{PRM_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
        "<|im_start|>assistant\nStep 1: add.<extra_0>So $\\boxed{2}$.<extra_0><|im_end|>\n"
    )


def test_pooling_input_drops_the_doubled_bos(llama: PreTrainedTokenizerBase) -> None:
    rendered = PoolingPrompt(step_tag="<extra_0>", tokenizer=llama).render(PROBLEM, ["a\n\n"])
    assert rendered.startswith("<|start_header_id|>system")
    assert vllm_ids(llama, rendered).count(llama.bos_token_id) == 1


def test_pooling_rejects_a_step_containing_the_tag(chatml: PreTrainedTokenizerBase) -> None:
    prompt = PoolingPrompt(step_tag="<extra_0>", tokenizer=chatml)
    with pytest.raises(PromptRenderError, match=r"step 1 contains the PRM step tag '<extra_0>'"):
        prompt.render(PROBLEM, ["a\n\n", "b<extra_0>\n\n"])
    with pytest.raises(PromptRenderError, match="the problem contains the PRM step tag"):
        prompt.render("What is <extra_0>?", ["a\n\n"])


def test_pooling_messages_are_what_the_client_renders(chatml: PreTrainedTokenizerBase) -> None:
    prompt = PoolingPrompt(step_tag="<extra_0>", tokenizer=chatml)
    steps = ["Step 1: add.\n\n", "So $\\boxed{2}$."]
    messages = prompt.messages(PROBLEM, steps)
    assert messages == [
        {"role": "system", "content": PRM_SYSTEM_PROMPT},
        {"role": "user", "content": PROBLEM},
        {"role": "assistant", "content": "Step 1: add.<extra_0>So $\\boxed{2}$.<extra_0>"},
    ]
    # what a server renders from them (its template, no generation prompt) is the client's text
    on_server = chatml.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert on_server == prompt.render(PROBLEM, steps)


def test_pooling_prompt_without_tokenizer_or_format_renders_on_the_server() -> None:
    prompt = PoolingPrompt(step_tag="<t>")
    assert (prompt.rendering, prompt.how) == ("server", "the server's chat template")
    assert prompt.messages(PROBLEM, ["a\n\n", "b"])[-1] == {
        "role": "assistant",
        "content": "a<t>b<t>",
    }
    with pytest.raises(PromptRenderError, match=r"step 0 contains the PRM step tag '<t>'"):
        prompt.messages(PROBLEM, ["a<t>"])
    with pytest.raises(ConfigError, match="renders on the server: send `messages`"):
        prompt.render(PROBLEM, ["a"])


def prm_endpoint(**fields: str) -> Endpoint:
    return Endpoint(base_url="http://127.0.0.1:9/v1", step_tag="<t>", **fields)  # type: ignore[arg-type]


def test_pooling_for_endpoint_without_a_tokenizer_at_hand_renders_on_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt = PoolingPrompt.for_endpoint(prm_endpoint(model="my-prm"))
    assert prompt.rendering == "server"
    assert prompt.how == (
        "the server's chat template (no tokenizer here: it is neither a local directory nor "
        "in the Hugging Face cache, and the hub cannot be asked (HF_HUB_OFFLINE is set))"
    )


def test_pooling_for_endpoint_renders_here_when_the_model_is_local(
    chatml: PreTrainedTokenizerBase,
) -> None:
    prompt = PoolingPrompt.for_endpoint(prm_endpoint(model=chatml.name_or_path))
    assert prompt.rendering == "client"
    assert prompt.how == f"the chat template of tokenizer {chatml.name_or_path!r}"
    assert PoolingPrompt.for_endpoint(prm_endpoint(model="m", prompt_format="{problem}{solution}"))\
        .rendering == "client"  # fmt: skip


def test_pooling_for_endpoint_with_an_explicit_tokenizer_never_falls_back(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "gone")
    with pytest.raises(TokenizerUnavailable, match="no such local directory"):
        PoolingPrompt.for_endpoint(prm_endpoint(model="my-prm", tokenizer=missing))


def test_logprob_without_a_tokenizer_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    endpoint = prm_endpoint(model="judge", scoring="logprob")
    with pytest.raises(ConfigError) as caught:
        LogprobPrompt.for_endpoint(endpoint)
    assert str(caught.value) == (
        "PRM endpoint http://127.0.0.1:9/v1: scoring='logprob' needs the PRM's tokenizer here, "
        "to find each label's position among the prompt's tokens (prompt_format cannot stand "
        "in for it): pass `tokenizer=` a local directory holding the tokenizer files of "
        "'judge'. Tokenizer 'judge': it is neither a local directory nor in the Hugging Face "
        "cache, and the hub cannot be asked (HF_HUB_OFFLINE is set)"
    )


def test_pooling_prompt_format() -> None:
    prompt = PoolingPrompt(step_tag="<t>", prompt_format="Q: {problem}\nA: {solution}")
    assert prompt.render(PROBLEM, ["a\n\n", "b"]) == "Q: What is 1+1?\nA: a<t>b<t>"


def test_pooling_prompt_format_must_not_hold_the_tag() -> None:
    with pytest.raises(ConfigError, match="contains the step tag '<t>'"):
        PoolingPrompt(step_tag="<t>", prompt_format="{problem}<t>{solution}")


def test_pooling_delimiter_is_what_gets_stripped() -> None:
    prompt = PoolingPrompt(step_tag="<t>", delimiter="##", prompt_format="{solution}")
    assert prompt.render(PROBLEM, ["a\n\n##", "b##"]) == "a<t>b<t>"


# --- logprob PRM ----------------------------------------------------------------------------


def test_logprob_prompt_text(llama: PreTrainedTokenizerBase) -> None:
    labelled = LogprobPrompt(llama).render(PROBLEM, ["Step 1: add.\n\n", "So 2.\n\n", "Done."])
    assert labelled.prompt == (
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 1+1? Step 1: add.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n+<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSo 2.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n+<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDone.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n+<|eot_id|>"
    )


@pytest.mark.parametrize("which", ["llama", "chatml"])
def test_logprob_label_positions_index_the_plus_tokens_vllm_sees(
    which: str, request: pytest.FixtureRequest
) -> None:
    tokenizer: PreTrainedTokenizerBase = request.getfixturevalue(which)
    steps = ["Step 1: add 1 + 1.\n\n", "+ so 2.\n\n", "Answer: 2"]  # "+" inside the text too
    labelled = LogprobPrompt(tokenizer).render("Is 1+1 = 2?", steps)
    ids = vllm_ids(tokenizer, labelled.prompt)
    plus = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("+"))
    assert len(labelled.label_positions) == 3
    assert [ids[p : p + 1] for p in labelled.label_positions] == [plus] * 3
    # each label is the token right after the assistant header
    header = "assistant<|end_header_id|>\n\n" if which == "llama" else "<|im_start|>assistant\n"
    for position in labelled.label_positions:
        before = tokenizer.decode(ids[:position])
        assert isinstance(before, str)
        assert before.endswith(header)
    if which == "llama":  # vLLM's BOS is token 0: the positions count it
        assert ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1


def test_logprob_rejects_a_tokenizer_that_merges_the_label(tmp_path: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<e>"], show_progress=False)
    tok.train_from_iterator(["assistant:+ user:x"] * 50, trainer)
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<e>",
        chat_template="{% for m in messages %}{{ m['role'] + ':' + m['content'] }} {% endfor %}",
    )
    with pytest.raises(
        ConfigError, match=r"merges the PRM label '\+' into the token 'assistant:\+'"
    ):
        LogprobPrompt(wrapped).render("x", ["y"])


def test_logprob_needs_a_step(llama: PreTrainedTokenizerBase) -> None:
    with pytest.raises(PromptRenderError, match="at least one step"):
        LogprobPrompt(llama).render(PROBLEM, [])


def test_saved_tokenizer_files_hold_the_template(llama: PreTrainedTokenizerBase) -> None:
    # guards the fixture itself: the template came from disk, not from the Python object
    config = json.loads((Path(llama.name_or_path) / "tokenizer_config.json").read_text())
    on_disk = (Path(llama.name_or_path) / "chat_template.jinja").read_text()
    assert config.get("chat_template", on_disk) == LLAMA_TEMPLATE


# --- policy, completions mode as token ids (the "\n\n" boundary, docs/design.md, section 6) -------


def test_this_tokenizer_has_the_boundary_trap(chatml: PreTrainedTokenizerBase) -> None:
    """Guards the fixture: byte-level BPE merges a trailing "\\n\\n" but not one before text."""
    alone = chatml("a.\n\n", add_special_tokens=False)["input_ids"]
    before_text = chatml("a.\n\nStep", add_special_tokens=False)["input_ids"]
    assert alone != before_text[: len(alone)]


@pytest.mark.parametrize("which", ["llama", "chatml"])
def test_continued_ids_encode_a_step_as_it_reads_before_more_text(
    request: pytest.FixtureRequest, which: str
) -> None:
    tokenizer: PreTrainedTokenizerBase = request.getfixturevalue(which)
    step = "Step 1: add the numbers 1 and 1.\n\n"
    following = tokenizer(step + "Step 2", add_special_tokens=False)["input_ids"]
    ids = continued_ids(tokenizer, step)
    assert list(ids) == following[: len(ids)]
    assert tokenizer.decode(list(ids)) == step


def test_continued_ids_fall_back_when_the_follower_merges(chatml: PreTrainedTokenizerBase) -> None:
    # "step" + "x" would be one word: the plain encoding is kept
    assert continued_ids(chatml, "so the answer is step") == tuple(
        chatml("so the answer is step", add_special_tokens=False)["input_ids"]
    )
    assert continued_ids(chatml, "") == ()


@pytest.mark.parametrize("which", ["llama", "chatml"])
def test_token_ids_are_the_prefix_as_vllm_encodes_it_then_each_step(
    request: pytest.FixtureRequest, which: str
) -> None:
    tokenizer: PreTrainedTokenizerBase = request.getfixturevalue(which)
    prompt = PolicyPrompt(tokenizer=tokenizer)
    steps = ("Step 1: add the numbers 1 and 1.\n\n", "Step 2: so the answer is 2.\n\n")
    ids = prompt.token_ids(PROBLEM, SYSTEM, steps)
    assert ids is not None
    prefix = vllm_ids(tokenizer, prompt.prefix(PROBLEM, SYSTEM))
    expected = prefix + [i for step in steps for i in continued_ids(tokenizer, step)]
    assert ids == expected
    assert ids.count(tokenizer.bos_token_id) == (1 if which == "llama" else 0)
    # the same text as the prompt sent as text, with the last step's boundary as written
    text = prompt.render(PROBLEM, SYSTEM, "".join(steps))
    assert tokenizer.decode(ids) == tokenizer.decode(vllm_ids(tokenizer, text))
    assert ids != vllm_ids(tokenizer, text) or which == "llama"
    assert prompt.token_ids(PROBLEM, SYSTEM, ()) == prefix


def test_token_ids_need_a_tokenizer() -> None:
    assert (
        PolicyPrompt(prompt_format="{system} {problem}").token_ids(PROBLEM, SYSTEM, ("a",)) is None
    )
