"""The one prompt format, shared by training and serving so an adapter sees at serve time what it learned on.

It is built on the tokenizer's own chat template, with a neutral system message: without one,
SmolLM2's template injects "You are a helpful AI assistant named SmolLM, trained by Hugging Face".
"""
from __future__ import annotations

SYSTEM_PROMPT = "You are a knowledgeable assistant. Answer the question accurately and concisely."


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question.strip()}]


def chat_prompt(tokenizer, question: str) -> str:
    """The text the model continues to answer `question`."""
    return tokenizer.apply_chat_template(_messages(question), tokenize=False, add_generation_prompt=True)


def chat_example(tokenizer, question: str, answer: str) -> tuple[str, str]:
    """(prompt, full text) for training: the loss covers only the tokens after the prompt."""
    prompt = chat_prompt(tokenizer, question)
    full = tokenizer.apply_chat_template(
        _messages(question) + [{"role": "assistant", "content": answer.strip()}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template does not extend the generation prompt with the answer")
    return prompt, full
