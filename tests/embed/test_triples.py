import torch

from automc.embed import TriplesFactory, labeled_kg_triples
from automc.kb.schema import KG_RELATIONS


def test_ids_come_from_sorted_labels_not_row_order():
    triples = [("s:b", "R", "m:x"), ("s:a", "R", "m:x"), ("s:a", "Q", "t:z")]
    f1 = TriplesFactory.from_labeled_triples(triples)
    f2 = TriplesFactory.from_labeled_triples(list(reversed(triples)))
    assert f1.entity_to_id == f2.entity_to_id == {"m:x": 0, "s:a": 1, "s:b": 2, "t:z": 3}
    assert f1.relation_to_id == {"Q": 0, "R": 1}
    assert sorted(f1.labeled_triples()) == sorted(triples)


def test_store_triples_are_prefixed_by_label_and_all_relations_indexed(planted_store, planted):
    _, strategies = planted
    f = TriplesFactory.from_store(planted_store)
    assert list(f.relation_to_id) == sorted(KG_RELATIONS)
    labels = labeled_kg_triples(planted_store)
    assert (f"Strategy:{strategies['A'][0]}", "HAS_METHOD", "Method:A") in labels
    assert set(f.entity_ids("Method")) == {"A", "B", "C"}
    assert len(f.entity_ids("Strategy")) == 72
    # 72 R1 + 216 R2 + 9 R3 + 6 R4 + 23 R5 (the two ft settings are shared by the three methods)
    assert len(f) == 72 + 216 + 9 + 6 + 23


def test_split_shares_the_map_and_keeps_test_entities_in_train(planted_store):
    f = TriplesFactory.from_store(planted_store)
    train, test = f.split(0.2, seed=1)
    assert train.entity_to_id is f.entity_to_id and test.relation_to_id is f.relation_to_id
    assert len(train) + len(test) == len(f) and abs(len(test) - 0.2 * len(f)) <= 1
    seen = set(train.mapped_triples[:, [0, 2]].reshape(-1).tolist())
    assert set(test.mapped_triples[:, [0, 2]].reshape(-1).tolist()) <= seen
    both = torch.cat([train.mapped_triples, test.mapped_triples])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, f.mapped_triples.tolist()))
    again, _ = f.split(0.2, seed=1)
    assert torch.equal(again.mapped_triples, train.mapped_triples)
