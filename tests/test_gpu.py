"""R-GAP on a GPU: with the model, the client's update and the attack on CUDA it recovers what the CPU recovers.

Skipped where torch.cuda.is_available() is False. cuDNN runs float32 convolutions in TF32 by default on Ampere and
later GPUs (10 mantissa bits); the client's update is computed here with TF32 off, IEEE float32 as on the CPU, so
these tests measure the attack. R-GAP turns TF32 off for its own solves; the float32 attack is checked with the
caller's TF32 off and on.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import rgap_bench.attacks.rgap.solvers.iterative as pcg_module
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem
from rgap_bench.linalg.pcg import pcg
from rgap_bench.linalg.precision import conv_tf32
from rgap_bench.models import cnn6

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False): GPU checks skipped"
)


def cuda_update(model: torch.nn.Module, batch):
    """The update a client on the GPU shares (computed on the client's model's device)."""
    with conv_tf32(False):
        return FedSGDClient(model).to("cuda").compute_update(batch)


@pytest.fixture(scope="module")
def cnn6_photo(photo_batch, make_update):
    """CNN6 at 32x32 on photo #0, as tests/test_rgap.py builds it, on the CPU and (a copy) on the GPU."""
    torch.manual_seed(0)
    model = cnn6()
    batch = photo_batch()
    cpu_update = make_update(model, batch)
    gpu_model = copy.deepcopy(model)
    gpu_update = cuda_update(gpu_model, batch)
    cpu_rec = RGAP(rank="off")(model, cpu_update)
    return {
        "model": model,
        "batch": batch,
        "cpu_update": cpu_update,
        "cpu_rec": cpu_rec,
        "gpu_model": gpu_model,
        "gpu_update": gpu_update,
    }


def test_update_on_cuda_matches_the_cpu_update(cnn6_photo):
    cpu, gpu = cnn6_photo["cpu_update"], cnn6_photo["gpu_update"]
    assert all(p.device.type == "cuda" for p in cnn6_photo["gpu_model"].parameters())
    assert cpu.tensors.keys() == gpu.tensors.keys()
    assert torch.equal(cpu.metadata.labels, gpu.metadata.labels)
    for name, g in gpu.tensors.items():
        assert g.device.type == "cuda", name
        c = cpu.tensors[name]
        assert torch.allclose(g.cpu(), c, rtol=1e-4, atol=1e-6 * float(c.abs().max())), name


def test_cnn6_float64_on_cuda_is_exact_and_matches_the_cpu_run(cnn6_photo, monkeypatch, psnr):
    devices = []

    def recording_pcg(normal, rhs, precondition, **kwargs):
        result = pcg(normal, rhs, precondition, **kwargs)
        devices.append((rhs.device.type, result.x.device.type))
        return result

    monkeypatch.setattr(pcg_module, "pcg", recording_pcg)
    rec = RGAP(rank="off")(cnn6_photo["gpu_model"], cnn6_photo["gpu_update"])
    batch, cpu_rec = cnn6_photo["batch"], cnn6_photo["cpu_rec"]
    assert len(devices) >= 6 and set(devices) == {("cuda", "cuda")}  # every conv layer solved by PCG on the GPU
    assert psnr(rec.inputs, batch.inputs) >= 60
    assert (rec.inputs - cpu_rec.inputs).abs().max() < 1e-4
    assert int(rec.labels[0]) == int(cpu_rec.labels[0])
    assert len(rec.layers) == len(cpu_rec.layers) == 7
    for g, c in zip(rec.layers, cpu_rec.layers, strict=True):
        where = f"layer {g.index} ({g.layer}): gpu {g.solver} {g.iterations} it {g.residual_rel:.2e}, cpu " + (
            f"{c.solver} {c.iterations} it {c.residual_rel:.2e}"
        )
        assert (g.layer, g.solver, g.unknowns) == (c.layer, c.solver, c.unknowns), where
        assert g.residual_rel < 1e-4, where
        assert abs(math.log10(max(g.residual_rel, 1e-16) / max(c.residual_rel, 1e-16))) < 1.5, where
        if c.iterations is not None:
            assert abs(g.iterations - c.iterations) <= max(20, c.iterations // 4), where


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "cudnn-tf32-outside"])
def test_cnn6_float32_on_cuda_still_recovers(cnn6_photo, tf32, capsys, psnr):
    """R-GAP switches cuDNN's TF32 off for its own solves, so the caller's TF32 setting does not matter."""
    with conv_tf32(tf32):
        rec = RGAP(rank="off", dtype="float32")(cnn6_photo["gpu_model"], cnn6_photo["gpu_update"])
    value = psnr(rec.inputs, cnn6_photo["batch"].inputs)
    iterations = [layer.iterations for layer in rec.layers]
    with capsys.disabled():
        print(
            f"\n[gpu] cnn6 float32, cuDNN TF32 {'on' if tf32 else 'off'}: {value:.1f} dB, PCG iterations {iterations}"
        )
    assert value >= 40, f"{value:.1f} dB, PCG iterations {iterations}"


def test_pcg_path_syncs_with_the_host_only_for_scalar_checks(cnn6_photo, capsys):
    """PCG reads its residual every 10 iterations; a layer adds a few scalar reads (norms, the Cholesky info).
    A per-iteration host round trip would make the count exceed the number of PCG iterations."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = RGAP(rank="off")(cnn6_photo["gpu_model"], cnn6_photo["gpu_update"])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    candidates = len(rec.info.get("candidates", [None]))
    iterations = sum(layer.iterations or 0 for layer in rec.layers)
    bound = candidates * (iterations // 10 + 25 * len(rec.layers) + 25)
    with capsys.disabled():
        print(f"\n[gpu] host syncs during the cnn6 attack: {syncs} ({candidates} candidate(s), {iterations} PCG its)")
    assert syncs > 0, "sync debug mode reported nothing, so the count measures nothing (the attack ends with .cpu())"
    assert syncs <= bound, f"{syncs} host syncs for {iterations} PCG iterations ({candidates} candidate(s))"
    assert iterations > bound / candidates  # the bound is tight enough to catch one sync per iteration


def _to_cuda(system: ConvSystem) -> ConvSystem:
    return ConvSystem(
        *(t.cuda() for t in (system.weight, system.k, system.grad, system.z)), system.geom, system.scale_rows
    )


def test_conv_system_adjoints_pass_the_dot_product_test_on_cuda(conv_case, make_conv_system):
    cpu, x_true = make_conv_system(*conv_case)
    system = _to_cuda(cpu)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(system.shape, dtype=torch.float64, generator=gen)
    v = torch.randn(system.weight.shape, dtype=torch.float64, generator=gen)
    y = torch.randn(system.k.shape, dtype=torch.float64, generator=gen)
    xc, vc, yc = x.cuda(), v.cuda(), y.cuda()
    lhs, rhs = (system.grad_rows(xc) * vc).sum(), (xc * system.grad_rows_adjoint(vc)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    lhs, rhs = (system.weight_rows(xc) * yc).sum(), (xc * system.weight_rows_adjoint(yc)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    # the same operators as on the CPU, row scales included
    assert torch.allclose(system.grad_scale.cpu(), cpu.grad_scale, atol=1e-12)
    assert torch.allclose(system.weight_scale.cpu(), cpu.weight_scale, atol=1e-12)
    assert torch.allclose(system.normal(xc).cpu(), cpu.normal(x), atol=1e-10)
    assert torch.allclose(system.channel_matrix().cpu(), cpu.channel_matrix(), atol=1e-12)
    result = pcg(system.normal, system.normal_rhs(), BlockJacobi(system), tol=1e-13, max_iter=2000)
    assert result.x.device.type == "cuda"
    assert torch.allclose(result.x.cpu(), x_true, atol=1e-8)


def test_client_wrapping_a_model_already_on_the_gpu_needs_no_move(photo_batch):
    """A model moved to CUDA before it is wrapped: the client computes on the weights' device."""
    torch.manual_seed(0)
    model = cnn6().cuda()
    update = FedSGDClient(model).compute_update(photo_batch())
    assert all(g.device.type == "cuda" for g in update.tensors.values())


def test_attack_many_on_cuda_batches_on_the_gpu_and_matches_one_call_per_update(photo_batch, psnr, monkeypatch):
    """Three photos in one `attack_many` call on the GPU: every conv layer's PCG is one batched solve on CUDA, and
    each answer is what one call per update gives there."""
    torch.manual_seed(0)
    model = cnn6().to("cuda")
    batches = [photo_batch(32, 3, i) for i in range(3)]
    updates = [cuda_update(model, batch) for batch in batches]
    attack = RGAP()
    alone = [attack(model, update) for update in updates]
    devices = []
    batched = pcg_module.pcg_many

    def recording(system, rhs, precondition, **kwargs):
        devices.append((rhs.device.type, rhs.shape[0]))
        return batched(system, rhs, precondition, **kwargs)

    monkeypatch.setattr(pcg_module, "pcg_many", recording)
    many = attack.attack_many(model, updates)
    assert devices and {device for device, _ in devices} == {"cuda"} and devices[0][1] == 3
    for rec, ref, batch in zip(many, alone, batches, strict=True):
        assert rec.status == ref.status
        assert (rec.inputs - ref.inputs).abs().max() < 1e-5
        assert [r.rank_method for r in rec.layers] == [r.rank_method for r in ref.layers]
        assert psnr(rec.inputs, batch.inputs) >= 60
