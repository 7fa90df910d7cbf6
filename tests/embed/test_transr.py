import pytest
import torch
from torch_geometric.nn.kge import KGEModel

from automc.embed import TransR, TransRInteraction, transr_score


def test_score_is_the_negative_translation_distance_and_broadcasts():
    torch.manual_seed(0)
    h, t = torch.randn(5, 4) * 0.1, torch.randn(5, 4) * 0.1
    r, m = torch.randn(5, 3) * 0.1, torch.randn(5, 3, 4)
    got = transr_score(h, r, m, t, clamp=False)
    want = torch.stack([-(m[i] @ h[i] + r[i] - m[i] @ t[i]).norm() for i in range(5)])
    assert got.shape == (5,) and torch.allclose(got, want, atol=1e-6)
    # one relation against a (2, 5) batch of entities
    hb = torch.randn(2, 5, 4)
    assert transr_score(hb, r[0], m[0], hb).shape == (2, 5)
    assert torch.allclose(transr_score(hb, r[0], m[0], hb), -r[0].norm().expand(2, 5))
    assert torch.equal(TransRInteraction(clamp=False)(h, (r, m), t), got)


def test_clamp_keeps_projections_in_the_unit_ball():
    h, t = torch.full((1, 4), 10.0), torch.zeros(1, 4)
    m, r = torch.eye(4).unsqueeze(0), torch.zeros(1, 4)
    assert transr_score(h, r, m, t).item() == pytest.approx(-1.0)


def test_model_matches_the_pure_function_and_fits_pyg_harness():
    torch.manual_seed(0)
    model = TransR(20, 3, 8, relation_dim=6)
    assert isinstance(model, KGEModel)
    with torch.no_grad():
        model.rel_proj.add_(torch.randn_like(model.rel_proj) * 0.3)
    h, r, t = torch.randint(20, (50,)), torch.randint(3, (50,)), torch.randint(20, (50,))
    want = transr_score(model.node_emb(h), model.rel_emb(r), model.rel_proj[r], model.node_emb(t))
    assert torch.allclose(model(h, r, t), want, atol=1e-6)
    # score_t / score_h agree with forward on every candidate
    all_e = torch.arange(20)
    assert torch.allclose(model.score_t(h[:3], r[:3])[1], model(h[1].expand(20), r[1].expand(20), all_e), atol=1e-5)
    assert torch.allclose(model.score_h(r[:3], t[:3])[2], model(all_e, r[2].expand(20), t[2].expand(20)), atol=1e-5)
    # PyG's loader and (raw, tail-only) test run on it
    batches = list(model.loader(h, r, t, batch_size=16, shuffle=False))
    assert len(batches) == 4 and torch.equal(batches[0][0], h[:16])
    mean_rank, mrr, hits = model.test(h[:5], r[:5], t[:5], batch_size=20, k=10, log=False)
    assert 0 <= mrr <= 1 and 0 <= hits <= 1


def test_loss_is_a_margin_loss_against_corrupted_triples_and_constraints_hold():
    model = TransR(30, 2, 8, num_negatives=3)
    model.generator = torch.Generator().manual_seed(0)
    h, r, t = torch.randint(30, (40,)), torch.randint(2, (40,)), torch.randint(30, (40,))
    nh, nr, nt = model.corrupt(h, r, t)
    assert torch.equal(nr, r) and bool(((nh == h) | (nt == t)).all())
    loss = model.loss(h, r, t)
    assert loss.ndim == 0 and 0 <= loss.item() <= model.margin + 2
    with torch.no_grad():
        model.node_emb.weight.mul_(10)
    model.apply_constraints()
    assert model.node_emb.weight.norm(dim=1).max() <= 1 + 1e-5


def test_bernoulli_corrupts_the_many_side():
    model = TransR(10, 1, 4)
    # relation 0 is N-to-1: nine heads share one tail -> corrupt the tail (head prob small)
    h, r, t = torch.arange(9), torch.zeros(9, dtype=torch.long), torch.full((9,), 9)
    model.fit_bernoulli(h, r, t)
    assert model.head_corrupt_prob[0] == pytest.approx(0.1)
