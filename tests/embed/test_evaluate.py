import pytest
import torch
from torch_geometric.nn.kge import KGEModel

from automc.embed import evaluate_link_prediction, rank_triples


class TableModel(KGEModel):
    """Scores from a fixed (head, tail) table; the relation is ignored. No score_t: exercises the generic path."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(table.shape[0], 1, 1)
        self.table = table

    def forward(self, head_index, rel_type, tail_index):
        return self.table[head_index, tail_index]


def test_filtered_rank_removes_other_true_answers_and_ties_count_half():
    table = torch.tensor([[0.0, 3.0, 2.0, 1.0],
                          [0.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0]])
    model = TableModel(table)
    test = torch.tensor([[0, 0, 2]])  # true tail 2 scores 2.0; tail 1 scores higher but is also true
    known = [torch.tensor([[0, 0, 1], [0, 0, 2]])]
    raw = rank_triples(model, test, num_entities=4, side="tail")
    filtered = rank_triples(model, test, num_entities=4, filter_triples=known, side="tail")
    assert raw.tolist() == [2.0] and filtered.tolist() == [1.0]
    # head side against tail 3: head 0 scores 1.0 (better), heads 2 and 3 tie with the true head 1: 1 + 1 + 2/2
    assert rank_triples(model, torch.tensor([[1, 0, 3]]), num_entities=4, side="head").tolist() == [3.0]


def test_result_metrics():
    model = TableModel(torch.eye(5))
    test = torch.tensor([[i, 0, i] for i in range(5)])
    res = evaluate_link_prediction(model, test, num_entities=5, filter_triples=[test])
    assert res.mrr == pytest.approx(1.0) and res.hits_at_10 == 1.0
    assert set(res.sides) == {"head", "tail"} and res.both.count == 10
    d = res.to_dict()
    assert d["mrr"] == pytest.approx(1.0) and d["tail"]["hits"]["hits@1"] == 1.0
