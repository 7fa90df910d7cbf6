import json

import pytest
import torch
from torch import nn

from automc.compress import layers, lowrank
from automc.compress.lowrank import FilterBasisConv, Tucker2Conv


def _conv(c_in=12, c_out=20, stride=2, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def _low_rank_conv(c_in, c_out, r_in, r_out):
    """A conv whose kernel has exact Tucker-2 ranks (r_in, r_out)."""
    conv = _conv(c_in, c_out, stride=1, bias=False)
    core = torch.randn(r_out, r_in, 3, 3)
    u_out, u_in = torch.randn(c_out, r_out), torch.randn(c_in, r_in)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("oiab,po,qi->pqab", core, u_out, u_in))
    return conv


@pytest.mark.parametrize("build", [lambda c: Tucker2Conv.from_conv(c, (12, 20)),
                                   lambda c: FilterBasisConv.from_conv(c, 20)])
def test_full_rank_reproduces_conv(build):
    conv = _conv()
    x = torch.randn(4, 12, 9, 9)
    new = build(conv)
    assert torch.allclose(new(x), conv(x), atol=1e-5)


def test_tucker2_recovers_exact_low_rank_kernel():
    conv = _low_rank_conv(16, 24, 5, 7)
    x = torch.randn(2, 16, 8, 8)
    new = Tucker2Conv.from_conv(conv, (5, 7))
    rel = (new(x) - conv(x)).norm() / conv(x).norm()
    assert rel < 1e-5
    assert sum(p.numel() for p in new.parameters()) == lowrank.tucker2_params(conv, (5, 7))


def test_reduced_rank_approximates_and_improves_with_rank():
    conv = _conv(16, 16, stride=1, bias=False)
    x = torch.randn(2, 16, 8, 8)
    ref = conv(x)
    errs_t = [((Tucker2Conv.from_conv(conv, (r, r))(x) - ref).norm() / ref.norm()).item() for r in (4, 8, 12)]
    errs_f = [((FilterBasisConv.from_conv(conv, r)(x) - ref).norm() / ref.norm()).item() for r in (4, 8, 12)]
    for errs in (errs_t, errs_f):
        assert errs[0] > errs[1] > errs[2] > 0
        assert errs[0] < 1.0


def test_tucker2_is_deterministic():
    conv = _conv()
    a = Tucker2Conv.from_conv(conv, (4, 6))
    b = Tucker2Conv.from_conv(conv, (4, 6))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("ranks", [(3, 5), (8, 8), (12, 20)])
def test_hooi_matches_tensorly_partial_tucker(ranks):
    tl_decomp = pytest.importorskip("tensorly.decomposition")
    from tensorly.tenalg import multi_mode_dot

    conv = _conv()
    w = conv.weight.detach().double()
    r_in, r_out = ranks
    core, u_out, u_in = lowrank.hooi2(w, r_out, r_in, n_iter=50)
    ours = torch.einsum("rsab,or,is->oiab", core, u_out, u_in)
    (tl_core, (tl_out, tl_in)), _ = tl_decomp.partial_tucker(w.numpy(), rank=[r_out, r_in], modes=[0, 1],
                                                             n_iter_max=50, tol=1e-12)
    theirs = torch.from_numpy(multi_mode_dot(tl_core, [tl_out, tl_in], modes=[0, 1]))
    err_ours, err_theirs = (w - ours).norm() / w.norm(), (w - theirs).norm() / w.norm()
    assert float(err_ours) == pytest.approx(float(err_theirs), abs=1e-3)  # pytest 9 cannot iterate a 0-d tensor
    assert torch.allclose(u_out.T @ u_out, torch.eye(r_out, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("build", [lambda c: Tucker2Conv.from_conv(c, (5, 7)),
                                   lambda c: FilterBasisConv.from_conv(c, 6)])
def test_spec_round_trip(build):
    conv = _conv()
    new = build(conv)
    spec = json.loads(json.dumps(new.spec()))
    rebuilt = layers.module_from_spec(spec)
    rebuilt.load_state_dict(new.state_dict())
    x = torch.randn(2, 12, 9, 9)
    assert torch.equal(rebuilt(x), new(x))
    assert rebuilt(x).shape == conv(x).shape


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 4))


@pytest.mark.parametrize("kind", ["tucker2", "filter_basis"])
def test_plan_hits_target_and_specs_reload(kind):
    net = _net()
    total = sum(p.numel() for p in net.parameters())
    target = int(0.5 * total)
    if kind == "tucker2":
        rank_at, params_of, build = lowrank.tucker2_ranks_at, lowrank.tucker2_params, Tucker2Conv.from_conv
    else:
        rank_at, params_of, build = (lowrank.filter_basis_rank_at, lowrank.filter_basis_params,
                                     FilterBasisConv.from_conv)
    ranks, removed = lowrank.plan_ranks(lowrank.decomposable_convs(net), target, rank_at, params_of)
    assert target <= removed <= target + 0.03 * total
    lowrank.replace_convs(net, ranks, build)
    assert total - sum(p.numel() for p in net.parameters()) == removed
    specs = json.loads(json.dumps(layers.lowrank_specs(net)))
    fresh = layers.apply_specs(_net(), specs)
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh(x), net(x))
    # a second step factorises the k x k part of each replacement (nested) and still reloads
    inner = lowrank.decomposable_convs(net)
    assert inner and all(n.rpartition(".")[0] in ranks for n, _ in inner)
    ranks2, _ = lowrank.plan_ranks(inner, int(0.1 * total), lowrank.filter_basis_rank_at,
                                   lowrank.filter_basis_params)
    lowrank.replace_convs(net, ranks2, FilterBasisConv.from_conv)
    fresh = layers.apply_specs(_net(), json.loads(json.dumps(layers.lowrank_specs(net))))
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(x), net(x))


def test_unreachable_target_reports_shortfall():
    net = _net()
    total = sum(p.numel() for p in net.parameters())
    _, removed = lowrank.plan_ranks(lowrank.decomposable_convs(net), total, lowrank.tucker2_ranks_at,
                                    lowrank.tucker2_params)
    assert removed < total


def test_recalibrate_bn_matches_the_data_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    batches = [torch.randn(8, 3, 6, 6) * 2 + 1 for _ in range(3)]
    layers.recalibrate_bn(net, batches)
    feats = torch.cat([net[0](x) for x in batches])
    assert torch.allclose(net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert not net.training and net[1].momentum == 0.1
