"""Strategy embeddings (AutoMC Algorithm 1): TransR on the knowledge graph, refined by NN_exp on experience."""

from automc.embed.evaluate import LinkPredictionResult, RankMetrics, evaluate_link_prediction, rank_triples
from automc.embed.experience import FEATURES, TARGETS, ExperienceSet, NNExp, experience_set, store_experiences
from automc.embed.train import MODELS, EmbedConfig, EmbedResult, Trained, fit, train, write_embeddings
from automc.embed.transr import TransR, TransRInteraction, transr_score
from automc.embed.triples import TriplesFactory, entity_label, labeled_kg_triples

__all__ = [
    "FEATURES",
    "MODELS",
    "TARGETS",
    "EmbedConfig",
    "EmbedResult",
    "ExperienceSet",
    "LinkPredictionResult",
    "NNExp",
    "RankMetrics",
    "Trained",
    "TransR",
    "TransRInteraction",
    "TriplesFactory",
    "entity_label",
    "evaluate_link_prediction",
    "experience_set",
    "fit",
    "labeled_kg_triples",
    "rank_triples",
    "store_experiences",
    "train",
    "transr_score",
    "write_embeddings",
]
