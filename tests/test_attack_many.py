"""`RGAP.attack_many`: several one-sample updates in one call, their conv layers solved as one batched PCG, give
what one call per update gives (up to rounding); updates that need more are attacked alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from rgap_bench.attacks.rgap import RGAP, lockstep
from rgap_bench.attacks.rgap.solvers import STRATEGIES
from rgap_bench.defenses.gaussian import GaussianNoise
from rgap_bench.linalg.batched_system import StackedBlockJacobi, StackedSystems
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem
from rgap_bench.linalg.pcg import pcg, pcg_many
from rgap_bench.linalg.symbol import shared_weights, symbol_norm_bound, symbol_sigma_bounds
from rgap_bench.models import build_convnet, cnn6


def _systems(conv_case, samples: int = 3, masked: bool = False) -> list[ConvSystem]:
    """`samples` systems of one layer: shared weights, each with its own input, error k and (optionally) dead rows."""
    in_shape, filters, kernel, stride, padding = conv_case
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(filters, in_shape[0], *kernel, dtype=torch.float64, generator=gen)
    geom = ConvGeometry(in_shape, kernel, stride, padding)
    systems = []
    for _ in range(samples):
        x = torch.randn(in_shape, dtype=torch.float64, generator=gen)
        z = F.conv2d(x[None], weight, stride=stride, padding=padding)[0]
        k = torch.randn(z.shape, dtype=torch.float64, generator=gen)
        grad = torch.nn.grad.conv2d_weight(x[None], weight.shape, k[None], stride, padding)
        alive = torch.rand(z.shape, generator=gen) > 0.2 if masked else None
        systems.append(ConvSystem(weight, k, grad, z, geom, alive=alive))
    return systems


@pytest.mark.parametrize("masked", [False, True], ids=["all-rows", "dead-rows"])
def test_stacked_normal_and_preconditioner_equal_each_samples_own(conv_case, masked):
    systems = _systems(conv_case, masked=masked)
    x = torch.randn(len(systems), *systems[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    stacked = StackedSystems(systems).normal(x)
    pres = [BlockJacobi(s) for s in systems]
    applied = StackedBlockJacobi(pres)(x)
    for b, (system, pre) in enumerate(zip(systems, pres, strict=True)):
        own = system.normal(x[b])
        assert float((stacked[b] - own).abs().max()) <= 1e-12 * float(own.abs().max())
        own_pre = pre(x[b])
        assert float((applied[b] - own_pre).abs().max()) <= 1e-10 * float(own_pre.abs().max())
    keep = torch.tensor([2, 0])  # a subset keeps its samples' own operators, in the order asked
    assert torch.allclose(StackedSystems(systems).subset(keep).normal(x[keep]), stacked[keep], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("case", "tall"),
    [(((3, 6, 6), 8, (3, 3), (1, 1), (1, 1)), True), (((3, 12, 12), 4, (4, 4), (2, 2), (2, 2)), False)],
    ids=["tall-K", "wide-K"],
)
def test_both_forms_of_the_gradient_rows(case, tall):
    """A tall K goes through its Gram matrix, a wide one through the unfolded input; both equal the sample's own."""
    systems = _systems(case)
    stacked = StackedSystems(systems)
    assert (stacked.grams is not None) == tall
    x = torch.randn(len(systems), *systems[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = stacked.normal(x)
    for b, system in enumerate(systems):
        assert torch.allclose(out[b], system.normal(x[b]), rtol=1e-12, atol=0)


def test_pcg_many_stops_each_sample_where_pcg_alone_does(conv_case):
    systems = _systems(conv_case, samples=4)
    pres = [BlockJacobi(s) for s in systems]
    rhs = torch.stack([s.normal_rhs() for s in systems])
    x0 = torch.zeros_like(rhs)
    many = pcg_many(StackedSystems(systems), rhs, StackedBlockJacobi(pres), tol=1e-11, max_iter=500, x0=x0)
    for b, (system, pre) in enumerate(zip(systems, pres, strict=True)):
        alone = pcg(system.normal, system.normal_rhs(), pre, tol=1e-11, max_iter=500)
        assert many.iterations[b] == alone.iterations
        assert float((many.x[b] - alone.x).abs().max()) <= 1e-8 * float(alone.x.abs().max())
        assert many.normal_residual_rel[b] <= 1e-11


def _tiny_cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [
        {"kind": "conv", "out": 12, "kernel": 4, "stride": 2, "padding": 2},
        {"kind": "conv", "out": 16, "kernel": 3, "stride": 1, "padding": 1},
        {"kind": "linear", "out": 1, "activation": "identity"},
    ]
    return build_convnet(layers, in_channels=3, image_size=16)


def _count_batched(monkeypatch) -> tuple[list[int], list[int]]:
    """Records the size of every batched solve the lockstep makes, and of every PCG solve made alone (as 1s)."""
    sizes: list[int] = []
    alone: list[int] = []
    batched, single = lockstep.solve_pcg_many, STRATEGIES["pcg"]

    def counted(problems, plans, options):
        sizes.append(len(problems))
        return batched(problems, plans, options)

    def counted_alone(problem, plan, options):
        alone.append(1)
        return single(problem, plan, options)

    monkeypatch.setattr(lockstep, "solve_pcg_many", counted)
    monkeypatch.setitem(STRATEGIES, "pcg", counted_alone)
    return sizes, alone


def _assert_same(many, alone):
    assert many.status == alone.status
    assert float((many.inputs - alone.inputs).abs().max()) <= 1e-6  # float32 images: a few ulps
    assert [r.rank_method for r in many.layers] == [r.rank_method for r in alone.layers]
    assert [r.solver for r in many.layers] == [r.solver for r in alone.layers]
    assert [r.iterations for r in many.layers] == [r.iterations for r in alone.layers]


@pytest.mark.parametrize("model_name", ["tiny", "cnn6"])
def test_one_call_equals_one_call_per_update(model_name, photo_batch, make_update, psnr, monkeypatch):
    model, size, count = (_tiny_cnn(0), 16, 4) if model_name == "tiny" else (cnn6(image_size=32), 32, 3)
    batches = [photo_batch(size, 3, i) for i in range(count)]
    updates = [make_update(model, batch) for batch in batches]
    attack = RGAP()
    alone = [attack(model, update) for update in updates]
    sizes, alone_solves = _count_batched(monkeypatch)
    many = attack.attack_many(model, updates)
    convs = sum(isinstance(block.op, torch.nn.Conv2d) for block in model.blocks)
    # every conv layer's first solves in one batch for all updates; the pattern refit's re-solves batched too
    assert sizes.count(count) >= convs and sizes[0] == count
    assert not alone_solves
    for rec, ref, batch in zip(many, alone, batches, strict=True):
        _assert_same(rec, ref)
        assert psnr(rec.inputs, batch.inputs) >= 60


def test_an_update_that_needs_more_is_attacked_alone(photo_batch, make_update, monkeypatch):
    model = _tiny_cnn(1)
    updates = [make_update(model, photo_batch(16, 3, i)) for i in range(3)]
    noisy = GaussianNoise(sigma=3e-3, relative=True, seed=0)(updates[1])
    # the noise unannounced: only the lockstep's own check (a layer's residual above the noise floor) can see it
    updates[1] = dataclasses.replace(noisy, metadata=dataclasses.replace(noisy.metadata, noise_sigma=None))
    attack = RGAP()
    alone = [attack(model, update) for update in updates]
    sizes, _ = _count_batched(monkeypatch)
    many = attack.attack_many(model, updates)
    assert sizes[0] == 3 and sizes[-1] == 2  # the noisy one left after its top conv layer
    assert torch.equal(many[1].inputs, alone[1].inputs)  # attacked on its own: bit for bit
    assert many[1].layers[-2].residual_rel > 1e-5
    for rec, ref in zip(many, alone, strict=True):
        _assert_same(rec, ref)


def test_one_update_and_none(photo_batch, make_update):
    model = _tiny_cnn(2)
    update = make_update(model, photo_batch(16, 3, 0))
    attack = RGAP()
    [one] = attack.attack_many(model, [update])
    _assert_same(one, attack(model, update))
    assert attack.attack_many(model, []) == []


def test_shared_weight_bounds_are_keyed_by_the_weights_content():
    """attack_many computes the weight rows' symbol bounds once per layer: the same numbers as alone, and a weight of
    other content gets its own."""
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(12, 3, 4, 4, dtype=torch.float64, generator=gen)
    geom = ConvGeometry((3, 32, 32), (4, 4), (2, 2), (2, 2))
    alone = symbol_norm_bound(weight, geom), symbol_sigma_bounds(weight, geom)
    with shared_weights():
        assert (symbol_norm_bound(weight.clone(), geom), symbol_sigma_bounds(weight.clone(), geom)) == alone
        assert symbol_norm_bound(2 * weight, geom) == pytest.approx(2 * alone[0], rel=1e-9)


def test_updates_of_two_models_are_batched_per_model(photo_batch, make_update):
    """A layer's batch shares its weights: two models' updates in one call still give each model's own answer."""
    models = [_tiny_cnn(3), _tiny_cnn(4)]
    pairs = [(models[i % 2], make_update(models[i % 2], photo_batch(16, 3, i))) for i in range(4)]
    attack = RGAP()
    for (model, update), rec in zip(pairs, _attack_pairs(attack, pairs), strict=True):
        _assert_same(rec, attack(model, update))


def _attack_pairs(attack: RGAP, pairs):
    """attack_many takes one model; its lockstep (what this test checks) takes any walks, so drive it directly."""
    jobs, hyps = [], []
    for i, (model, update) in enumerate(pairs):
        hyp = attack._hypotheses(model, update)
        hyps.append(hyp)
        jobs += [lockstep.Job(hyp.layers, start, hyp.options, i) for start in hyp.starts]
    solved = lockstep.recurse_many(jobs, attack.dtype)
    return [
        attack._choose(model, update, hyp, [r for job, r in zip(jobs, solved, strict=True) if job.owner == i])
        for i, ((model, update), hyp) in enumerate(zip(pairs, hyps, strict=True))
    ]


@pytest.mark.parametrize("in_shape", [(2, 6, 6), (3, 12, 12)], ids=["tall-K", "wide-K"])
def test_stacked_normal_of_a_pooled_conv_with_dead_rows(in_shape):
    """A conv followed by average pooling (LeNet's): the weight rows are the pooled filters at the pooled stride,
    the gradient rows see the upsampled error; with dead rows (a ReLU) dropped too."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(6, in_shape[0], 3, 3, dtype=torch.float64, generator=gen)
    geom = ConvGeometry(in_shape, (3, 3), (1, 1), (1, 1))
    pooled = (6, in_shape[1] // 2, in_shape[2] // 2)
    systems = []
    for _ in range(3):
        k, z = (torch.randn(pooled, dtype=torch.float64, generator=gen) for _ in range(2))
        grad = torch.randn(weight.shape, dtype=torch.float64, generator=gen)
        systems.append(ConvSystem(weight, k, grad, z, geom, pool=2, alive=torch.rand(pooled, generator=gen) > 0.3))
    x = torch.randn(3, *in_shape, dtype=torch.float64, generator=gen)
    stacked = StackedSystems(systems)
    assert (stacked.grams is not None) == (in_shape == (2, 6, 6))
    out = stacked.normal(x)
    for b, system in enumerate(systems):
        assert torch.allclose(out[b], system.normal(x[b]), rtol=1e-12, atol=1e-12 * float(out[b].abs().max()))
