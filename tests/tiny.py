"""A tiny random Llama model and tokenizer, saved as a local Hugging Face folder, so unit tests run in seconds."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "What is compound interest? Interest earned on interest.",
    "How do I reverse a list in Python? Use slicing with a step of minus one.",
    "What causes a fever? The body raises its temperature to fight infection.",
    "Is a verbal contract binding? Often yes, but some contracts must be in writing.",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?()[]{}'\"-+=*/",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>", unk_token="<|endoftext|>", chat_template=CHATML)


def build_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.3, eos_token_id=2, pad_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def save_random_adapter(model_dir: Path, folder: Path, *, rank: int = 4, targets="all-linear", seed: int = 1,
                        std: float = 0.3) -> Path:
    """A PEFT LoRA adapter with random non-zero A and B, saved in PEFT's standard format."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, std)
    peft_model.save_pretrained(folder)
    return folder


def save_tiny(folder: Path) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
