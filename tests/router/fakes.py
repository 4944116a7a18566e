"""A deterministic hashing bag-of-words encoder with the gate's encoder interface, so tests skip the real model."""
from __future__ import annotations

import hashlib
import re

import numpy as np


class HashingEncoder:
    """Each word adds a signed one-hot at its md5 bucket; rows are L2-normalised. Counts calls and texts encoded."""

    def __init__(self, dim: int = 256, max_tokens: int = 32, name: str = "hashing-bow",
                 tuned: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.tuned = tuned
        self.dim = dim
        self.max_tokens = max_tokens
        self.calls = 0
        self.encoded: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.encoded += texts
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in self._words(text)[: self.max_tokens - 2]:
                h = int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0 if h & (1 << 31) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    def token_count(self, text: str) -> int:
        return len(self._words(text)) + 2

    def tuned_on(self, texts: list[str]) -> np.ndarray:
        return np.array([t in self.tuned for t in texts], dtype=bool)

    @staticmethod
    def _words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


class ConstantEncoder(HashingEncoder):
    """Every question gets the same unit vector: an encoder that carries no information at all."""

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.encoded += texts
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, 0] = 1.0
        return out


EXAMPLES = {
    "medical": [
        "What symptoms of a heart attack should my doctor check?", "How does a doctor treat high blood pressure?",
        "What medicine dose is safe for a fever and pain?", "Is this skin rash a symptom my doctor should see?",
        "What causes migraine pain and nausea symptoms?", "Which medicine treats a bacterial infection?",
        "When should I see a doctor about chest pain?", "What does my doctor mean by high cholesterol?",
        "How does a doctor diagnose diabetes symptoms?", "Which vaccine does my doctor recommend for a fever?",
    ],
    "legal": [
        "Can my landlord keep my deposit under the lease contract?", "Is a verbal contract legally binding in court?",
        "How do I sue in court for breach of contract?", "What legal rights do tenants have against a landlord?",
        "Do I need a lawyer to write a legal will?", "What is the legal time limit to sue in court?",
        "Can my employer fire me without a legal reason?", "How does a court and a lawyer decide child custody?",
        "What makes a contract clause legally unenforceable?", "Is it legal to record a call without consent in court?",
    ],
    "finance": [
        "How does compound interest grow my savings?", "Should I pay off debt or invest savings in stocks?",
        "What is an index fund and how do I invest in it?", "How do bonds pay interest to an investor?",
        "What credit score do I need for a mortgage interest rate?", "How much savings should I invest for retirement?",
        "What are stock dividends and how are they taxed when I invest?", "How does inflation change interest rates?",
        "Is a retirement account better for my savings?", "How do I budget my savings and invest the rest?",
    ],
}
GENERAL = [
    "Tell me a funny joke.", "What is the capital of France?", "Write a short poem about autumn leaves.",
    "Hi there, how are you today?", "Who painted the famous Mona Lisa?", "What is a funny name for a cat?",
    "Recommend a funny movie for tonight.", "How tall is Mount Everest?", "Write a short poem about the sea.",
    "What is a word that rhymes with orange?",
]
