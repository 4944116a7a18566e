"""The learned gate: which LoRA experts (if any) should answer a question, with what weights."""
from router.balance import LoadStats
from router.cache import EmbeddingCache
from router.decision import GENERAL, ExpertChoice, RoutingDecision
from router.encoder import Encoder, SentenceEncoder
from router.evaluation import evaluate, load_labelled
from router.gate import Gate
from router.lexical import Lexical
from router.training import FitReport, training_hash

__all__ = [
    "GENERAL",
    "EmbeddingCache",
    "Encoder",
    "ExpertChoice",
    "FitReport",
    "Gate",
    "Lexical",
    "LoadStats",
    "RoutingDecision",
    "SentenceEncoder",
    "evaluate",
    "load_labelled",
    "training_hash",
]
