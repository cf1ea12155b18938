"""A tiny random-weight Llama with its own tokenizer and chat template, built offline.

Tests of the model server and the trainer need a real model directory in the Hugging Face
layout (config.json, safetensors weights, tokenizer files, chat template) without downloading
anything. The model is two layers wide enough for vLLM's kernels (head_dim >= 32) and its
vocabulary matches the tokenizer exactly, so every engine agrees on the token ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Enough ordinary words that prompts in tests tokenize to something other than <unk>.
_CORPUS = """
the a an of to in and is are was were be been it that this for on with as by at from or not but
what which who how why when where hello world kubernetes operator model serve inference tuning
gpu node cluster workspace adapter lora preset token chat user assistant system answer question
one two three four five six seven eight nine ten red green blue cat dog sky sea tree sun moon
say write tell me you i we they he she please thanks good bad yes no true false ok sure
""".split()  # noqa: SIM905 (a word list reads better as prose)


def build_tokenizer(directory: Path) -> Any:
    """Write a word-level tokenizer with a chat template to `directory` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *sorted(set(_CORPUS)), *[chr(c) for c in range(33, 127)]]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word pieces with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write a 2-layer Llama with random weights, tokenizer and chat template; return the directory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 32: the smallest vLLM's CPU attention accepts
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_adapter(model_dir: Path, directory: Path, seed: int = 1, rank: int = 8) -> Path:
    """Write a LoRA adapter for the tiny model with non-zero random weights; return the directory.

    peft initialises LoRA's B matrix to zero (an adapter that changes nothing); the weights are
    randomised here so a test can tell base and adapter outputs apart.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=rank,
        lora_alpha=rank * 2,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(directory, safe_serialization=True)
    config_path = directory / "adapter_config.json"
    # Point at the directory the adapter was made for, not a hub id the test cannot reach.
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(model_dir)
    config_path.write_text(json.dumps(config, indent=2))
    return directory
