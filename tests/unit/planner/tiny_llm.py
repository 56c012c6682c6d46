"""A tiny random-init causal LM and its tokenizer, written offline into a folder (no downloads).

The tokenizer is a byte-level BPE trained in memory on a few sentences (so every byte is encodable and
xgrammar reads its vocabulary as byte-level); the model is a 2-layer Llama with hidden size 32. Its answers
are noise: only constrained decoding makes them parse as the schema's JSON.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    '{"name": "Ammu", "role": "girl", "age": 8, "boxes": [[100, 200, 300, 400]], "ok": true}',
    "A girl and her grandmother fold a paper boat by the river in Kerala.",
    "Cold brew coffee on a slate shelf with a ceramic cup, soft morning light.",
    "0123456789 []{}:, abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def prompt_corpus() -> list[str]:
    """The planner's own prompt templates and few-shot examples: a tokenizer trained on them packs prompts
    into few tokens, which keeps the tiny model's attention (and the test) short."""
    from importlib import resources

    folder = resources.files("atelier_planner.llm").joinpath("prompts")
    return [f.read_text(encoding="utf-8") for f in folder.iterdir() if f.name.endswith((".md", ".json"))]


def write_tiny_llm(folder: Path, *, seed: int = 0, vocab_size: int = 3000) -> Path:
    """Save a tiny causal LM + tokenizer to ``folder`` (loaded later with ``from_pretrained``)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4 + prompt_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16384,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
