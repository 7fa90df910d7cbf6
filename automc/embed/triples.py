"""Knowledge-graph triples as id tensors: entity and relation ids from *sorted* labels, splits sharing one map."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from automc.errors import ValidationError
from automc.kb.schema import KG_RELATIONS, REL
from automc.kb.store import Store

Triple = tuple[str, str, str]


def entity_label(node_label: str, key: str) -> str:
    """Entity label used in the index: the node label and its key, e.g. ``Method:NS``."""
    return f"{node_label}:{key}"


def split_label(label: str) -> tuple[str, str]:
    """Inverse of ``entity_label``: ``Method:NS`` -> ``("Method", "NS")``."""
    node, _, key = label.partition(":")
    return node, key


def labeled_kg_triples(store: Store) -> list[Triple]:
    """The store's R1-R5 triples with entity labels prefixed by their node label (keys may collide across types)."""
    return label_triples(store.kg_triples())


def label_triples(triples: list[Triple]) -> list[Triple]:
    """``Store.kg_triples()`` rows with each key prefixed by its node label."""
    return [(entity_label(REL[r].src, h), r, entity_label(REL[r].dst, t)) for h, r, t in triples]


@dataclass(frozen=True)
class TriplesFactory:
    """Triples as an ``(n, 3)`` long tensor of (head, relation, tail) ids plus the label -> id maps.

    Ids come from sorted labels, so they do not depend on the order the store returns rows in.
    """

    mapped_triples: torch.Tensor  # (n, 3) int64
    entity_to_id: dict[str, int]
    relation_to_id: dict[str, int]

    # -- constructors ------------------------------------------------------------------------------------------
    @classmethod
    def from_labeled_triples(cls, triples: Iterable[Triple], *, relations: Sequence[str] | None = None,
                             entity_to_id: dict[str, int] | None = None,
                             relation_to_id: dict[str, int] | None = None) -> TriplesFactory:
        """Build the maps from sorted labels (or reuse given maps, for a split of the same graph)."""
        triples = list(triples)
        if entity_to_id is None:
            labels = sorted({x for h, _, t in triples for x in (h, t)})
            entity_to_id = {e: i for i, e in enumerate(labels)}
        if relation_to_id is None:
            rels = sorted(set(relations) if relations is not None else {r for _, r, _ in triples})
            relation_to_id = {r: i for i, r in enumerate(rels)}
        try:
            ids = [(entity_to_id[h], relation_to_id[r], entity_to_id[t]) for h, r, t in triples]
        except KeyError as e:
            raise ValidationError(f"triple uses {e.args[0]!r}, which is not in the entity/relation map") from None
        mapped = torch.tensor(ids, dtype=torch.long).reshape(-1, 3)
        return cls(mapped, entity_to_id, relation_to_id)

    @classmethod
    def from_store(cls, store: Store) -> TriplesFactory:
        """All R1-R5 triples of the store (relations indexed over every R1-R5 type, even absent ones)."""
        return cls.from_kg_triples(store.kg_triples())

    @classmethod
    def from_kg_triples(cls, triples: list[Triple]) -> TriplesFactory:
        """From rows as ``Store.kg_triples()`` returns them."""
        return cls.from_labeled_triples(label_triples(triples), relations=KG_RELATIONS)

    # -- views -------------------------------------------------------------------------------------------------
    @property
    def num_entities(self) -> int:
        return len(self.entity_to_id)

    @property
    def num_relations(self) -> int:
        return len(self.relation_to_id)

    @property
    def num_triples(self) -> int:
        return int(self.mapped_triples.shape[0])

    def __len__(self) -> int:
        return self.num_triples

    @property
    def id_to_entity(self) -> list[str]:
        out = [""] * self.num_entities
        for e, i in self.entity_to_id.items():
            out[i] = e
        return out

    def entity_ids(self, node_label: str) -> dict[str, int]:
        """Key -> entity id for the entities of one node label (``Strategy``, ``Method``, ...)."""
        prefix = node_label + ":"
        return {e[len(prefix):]: i for e, i in self.entity_to_id.items() if e.startswith(prefix)}

    def labeled_triples(self) -> list[Triple]:
        ents, rels = self.id_to_entity, {i: r for r, i in self.relation_to_id.items()}
        return [(ents[h], rels[r], ents[t]) for h, r, t in self.mapped_triples.tolist()]

    def with_triples(self, mapped: torch.Tensor) -> TriplesFactory:
        """Same maps, other triples."""
        return TriplesFactory(mapped.reshape(-1, 3), self.entity_to_id, self.relation_to_id)

    # -- splitting ---------------------------------------------------------------------------------------------
    def split(self, test_fraction: float = 0.1, *, seed: int = 0) -> tuple[TriplesFactory, TriplesFactory]:
        """(train, test) sharing this factory's maps; a triple goes to test only while both its entities keep
        another triple in train, so every test entity has been seen in training."""
        if not 0.0 < test_fraction < 1.0:
            raise ValidationError(f"test_fraction must be in (0, 1), got {test_fraction}", field="test_fraction")
        n = self.num_triples
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen).tolist()
        degree = torch.bincount(self.mapped_triples[:, [0, 2]].reshape(-1), minlength=self.num_entities).tolist()
        want = int(round(test_fraction * n))
        test_rows: list[int] = []
        triples = self.mapped_triples.tolist()
        for i in order:
            if len(test_rows) >= want:
                break
            h, _, t = triples[i]
            if degree[h] > 1 and degree[t] > 1 and h != t:
                degree[h] -= 1
                degree[t] -= 1
                test_rows.append(i)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[test_rows] = True
        return self.with_triples(self.mapped_triples[~mask]), self.with_triples(self.mapped_triples[mask])
