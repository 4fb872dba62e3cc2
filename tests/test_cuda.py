"""The CUDA paths: what only a GPU runs, checked against the CPU or the plain formulation.

Every test here is marked ``cuda`` and skipped when no CUDA device is present; run them with

    python -m pytest -m cuda            # on a GPU machine (benchmarks/gpu_check.sh does this)

* the fused RNN cell (its own backward) against the step-by-step autograd cell on the GPU, fp32 and
  bf16 autocast, train and eval mode, and against a float64 CPU reference;
* WPL's Fisher updates, penalty and direct penalty gradient on the GPU against the CPU;
* the micro-CNN's paths (both layouts on cuDNN, bf16, pinned batches): tests/test_cuda_cnn.py;
* a tiny search on the GPU with ``--deterministic=True``: the resumed run repeats the uninterrupted one;
* a checkpoint written on the GPU loads on the CPU, and one written there loads back on the GPU;
* ``--amp`` (bf16) and ``--compile`` searches; the RNN cell as CUDA graphs: tests/test_cuda_graphs.py.

``CUDA_TESTS_ON_CPU=1`` runs the same bodies on the CPU instead (a dry run that checks the tests
themselves without a GPU; it proves nothing about CUDA).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call (--deterministic)

import pytest
import torch
from conftest import metrics_without_timing, paper_rnn_args
from torch.nn import functional as F

import config
import main
from modes.builders import build_trainer
from models.rnn import RNNArch, SharedRNN
from regularizers.store import CHUNK
from regularizers.wpl import WPL
from engine.runlog import load_checkpoint

ON_CPU = os.environ.get("CUDA_TESTS_ON_CPU", "") not in ("", "0")
DEVICE = torch.device("cpu" if ON_CPU else "cuda")
CPU = torch.device("cpu")
NUM_GPU = "--num_gpu=0" if ON_CPU else "--num_gpu=1"
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a CUDA device")]

ARCH = RNNArch(("tanh", "ReLU", "sigmoid", "identity", "tanh", "ReLU"), (0, 0, 1, 2, 2))  # branches, 3 loose ends
SEARCH = ["--max_epoch=2", "--shared_max_step=3", "--num_batch_per_iter=2", "--controller_max_step=2",
          "--start_using_fisher=0", "--start_training_controller=0", "--save_epoch=1", "--shared_embed=16",
          "--shared_hid=16", "--batch_size=4", "--test_batch_size=2", "--num_blocks=4", "--derive_num_sample=3",
          "--forgetting_eval_batches=2", "--dataset=tiny", NUM_GPU]


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 matmuls and convolutions in full fp32 (no TF32), so GPU and CPU figures are comparable."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` over the whole tensor, in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ----------------------------------------------------------------------------------- RNN cell
def make_rnn(device: torch.device, dtype: torch.dtype = torch.float32) -> SharedRNN:
    torch.manual_seed(0)
    model = SharedRNN(ntokens=13, embed=8, hid=8, num_blocks=ARCH.num_nodes, dropout=0.3, dropoute=0.2,
                      dropouti=0.25, wdrop=0.4, tie_weights=True, next_state="avg")
    for p in model.parameters():  # larger than the init so every term of the cell matters
        torch.nn.init.normal_(p, std=0.5)
    return model.to(device=device, dtype=dtype)


def rnn_run(model: SharedRNN, fused: bool, amp: bool, tokens: torch.Tensor, h0: torch.Tensor,
            targets: torch.Tensor, arch: RNNArch = ARCH) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and gradients (every parameter and the initial state) of one forward/backward."""
    model.zero_grad(set_to_none=True)
    model.fused = fused
    h = h0.clone().requires_grad_(True)
    torch.manual_seed(5)  # the same dropout masks for both formulations
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(tokens, h, arch)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten())
    # The state's term is linear in a fixed random direction: a term like |hidden|^2 has a radial
    # gradient, which the norm clip (active here: weights of std 0.5) projects to exactly zero, so the
    # cell's gradient there is the rounding noise of the forward state (bf16: ~0.4% of |dh|; in eval
    # mode it made the last steps' input gradient 17% off fp32 instead of 6%).
    probe = torch.randn(out.hidden.shape, generator=torch.Generator().manual_seed(9)).to(out.hidden.device)
    (loss + (probe * out.hidden.float()).sum() + 0.01 * out.raw.float().pow(3).sum()).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    grads["h0"] = h.grad
    return [t.detach().float() for t in (out.logits, out.hidden, out.raw)], grads


def rnn_inputs(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    tokens, targets = torch.randint(13, (7, 3), generator=g), torch.randint(13, (7, 3), generator=g)
    h0 = torch.randn(3, 8, generator=g)  # drawn in fp32 whatever ``dtype``: the same values
    return tokens.to(device), h0.to(device=device, dtype=dtype), targets.to(device)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fused_cell_matches_the_plain_cell_on_the_device(training: bool) -> None:
    model = make_rnn(DEVICE).train(training)
    inputs = rnn_inputs(DEVICE)
    (fused_out, fused_grads), (plain_out, plain_grads) = (rnn_run(model, f, False, *inputs) for f in (True, False))
    assert fused_out[0].device.type == DEVICE.type
    for name, a, b in zip(("logits", "hidden", "raw"), fused_out, plain_out):
        assert rel_err(a, b) < 1e-5, (name, rel_err(a, b))
    assert fused_grads.keys() == plain_grads.keys()
    for name in fused_grads:
        assert rel_err(fused_grads[name], plain_grads[name]) < 1e-5, (name, rel_err(fused_grads[name], plain_grads[name]))


SMOOTH_ARCH = RNNArch(tuple("tanh" if a == "ReLU" else a for a in ARCH.activations), ARCH.parents)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch", [ARCH, SMOOTH_ARCH], ids=["relu", "smooth"])
def test_both_cells_under_bf16_autocast_stay_close_to_fp32(arch: RNNArch, training: bool) -> None:
    """Every output and gradient of both cells under bf16 autocast against the fp32 fused cell.

    Error model: autograd's own autocast formulation of the same cell (the plain cell) is the
    yardstick, not a number picked once: every tensor of either cell within the bound the plain cell
    meets (0.3), and the fused cell's worst no worse than the plain cell's, except where a ReLU makes
    the function itself jump. Measured (the H200 and the CPU agree): in train mode fused 0.136 (h0)
    against plain 0.209; in eval mode with ReLU nodes fused 0.076 against 0.012, because one ReLU
    input of this batch sits at 0 and bf16 rounding flips it in the fused cell only (the cell with
    those nodes as tanh: fused 0.007 against 0.012; bf16 inputs alone or a bf16 product alone: 0.5-0.9 %).
    """
    model = make_rnn(DEVICE).train(training)
    inputs = rnn_inputs(DEVICE)
    ref_out, ref_grads = rnn_run(model, True, False, *inputs, arch)
    worst = {}
    for fused, out_tol in ((True, 1e-2), (False, 2e-2)):
        out, grads = rnn_run(model, fused, True, *inputs, arch)
        for name, a, b in zip(("logits", "hidden", "raw"), out, ref_out):
            assert rel_err(a, b) < out_tol, (fused, name, rel_err(a, b))
        assert grads.keys() == ref_grads.keys()
        errors = {name: rel_err(grads[name], ref_grads[name]) for name in grads}
        assert all(grads[name].dtype == torch.float32 for name in grads)  # the gradients reach the fp32 weights
        assert max(errors.values()) < 0.3, (fused, errors)
        worst[fused] = max(errors.values())
    if training or arch is SMOOTH_ARCH:
        assert worst[True] <= worst[False], worst


def test_fused_cell_on_the_device_matches_a_float64_cpu_reference() -> None:
    """Eval mode (no random masks, which differ between devices): fp32 GPU against float64 CPU."""
    fast, ref = make_rnn(DEVICE).eval(), make_rnn(CPU, torch.float64).eval()
    (fast_out, fast_grads), (ref_out, ref_grads) = (rnn_run(fast, True, False, *rnn_inputs(DEVICE)),
                                                    rnn_run(ref, False, False, *rnn_inputs(CPU, torch.float64)))
    for a, b in zip(fast_out, ref_out):
        assert rel_err(a, b) < 1e-5
    for name in ref_grads:
        assert rel_err(fast_grads[name], ref_grads[name]) < 1e-4, name
    with torch.inference_mode():  # the no-grad path of the fused cell
        out = fast(rnn_inputs(DEVICE)[0], rnn_inputs(DEVICE)[1], ARCH)
    assert rel_err(out.logits, ref_out[0]) < 1e-5


# ---------------------------------------------------------------------------------------- WPL
def wpl_pair(mode: str, device: torch.device, dtype: torch.dtype = torch.float32
             ) -> tuple[WPL, list[torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(0)
    shapes = [(CHUNK * 2 + 77,), (300, 300), (7,)]  # chunked path, whole-tensor path, tiny
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(device, dtype)) for s in shapes]
    return WPL({"a": params[:2], "b": params[2:]}, lambda_fisher=0.9, clip_by_norm=10.0, momentum=True, mode=mode), params


def wpl_run(mode: str, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """Three Fisher updates (clip active), the weights moved off the anchors, then the penalty
    (autograd and direct) and its gradients: every figure the search reads, for one device and dtype."""
    wpl, params = wpl_pair(mode, device, dtype)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(device, dtype)
        wpl.update_fisher(["a", "b"], alpha=60.0)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(device, dtype))
    for p in params:
        p.grad = None
    value = wpl.penalty(["a", "b"], alpha=60.0)
    value.backward()
    autograd = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    direct = wpl.add_penalty_grad_(["a", "b"], alpha=60.0)
    assert direct.device.type == device.type
    return {"penalty": value.detach(), "direct": direct, "autograd": autograd, "direct_grads": [p.grad for p in params],
            "state": wpl.state_dict(), "stats": torch.tensor(wpl.fisher_stats(["a", "b"]), dtype=torch.float64)}


def flat_figures(run: dict[str, object]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in run.items():
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else [("", value)]
        out.update({f"{key}/{k}": torch.as_tensor(v) for k, v in items})
    return out


@pytest.mark.parametrize("mode", ["compound", "loss"])
def test_wpl_on_the_device_is_as_accurate_as_the_cpu(mode: str) -> None:
    """Every figure against a float64 run. The Fisher clip's norm of a 524,365-entry tensor is 2e-5
    off in fp32 on the CPU (its vectorised norm accumulates in fp32 lanes), 1e-8 on the H200 (its
    tree reduction): the CPU is the less accurate side, and a direct GPU-vs-CPU bound of 1e-5 failed
    for that reason. Error model: each device figure no further from float64 than twice the CPU's
    fp32 one, plus ~8 fp32 epsilons (1e-6) for the figures the CPU gets right to the last bits."""
    runs = {key: flat_figures(wpl_run(mode, device, dtype))
            for key, device, dtype in (("cpu", CPU, torch.float32), ("dev", DEVICE, torch.float32),
                                       ("exact", CPU, torch.float64))}
    cpu, dev, exact = runs["cpu"], runs["dev"], runs["exact"]
    assert cpu.keys() == dev.keys() == exact.keys()
    for key, ref in exact.items():
        assert rel_err(dev[key], ref) <= 2 * rel_err(cpu[key], ref) + 1e-6, (key, rel_err(dev[key], ref), rel_err(cpu[key], ref))
    # the two paths on one device: chunked fp32 dot products against one sum (CPU: 1.6e-6 apart)
    assert float(dev["direct/"]) == pytest.approx(float(dev["penalty/"]), rel=1e-5)
    restored, _ = wpl_pair(mode, CPU)  # a device WPL state loads into a CPU WPL
    device_state = wpl_run(mode, DEVICE, torch.float32)["state"]
    assert isinstance(device_state, dict)
    restored.load_state_dict(device_state)
    assert all(torch.equal(restored.state_dict()[k], v.cpu()) for k, v in device_state.items())


# --------------------------------------------------------------------------- searches (main.py)
def search(data_dir: Path, log_dir: Path, comment: str, *extra: str) -> Path:
    argv = [*paper_rnn_args(), *SEARCH, f"--data_dir={data_dir}", f"--log_dir={log_dir}", f"--comment={comment}",
            "--deterministic=True", *extra]
    assert main.main(argv) == 0
    return log_dir / f"tiny_{comment}"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def device_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's RNN command, shrunk, for 2 epochs on the device with --deterministic=True."""
    return search(data_dir, tmp_path_factory.mktemp("logs"), "device")


def test_search_runs_on_the_device_and_saves_its_rng(device_run: Path) -> None:
    assert f"on {DEVICE.type}" in (device_run / "train.log").read_text()
    assert [r["epoch"] for r in records(device_run)] == [0, 1]
    assert all(math.isfinite(r["shared_loss"]) and math.isfinite(r["valid_ppl"]) for r in records(device_run))
    state = load_checkpoint(device_run / "checkpoints" / "latest.pt", CPU)
    assert state["epoch"] == 2 and ("cuda" in state["rng"]) == torch.cuda.is_available()


def test_resumed_run_on_the_device_equals_the_uninterrupted_one(device_run: Path, data_dir: Path) -> None:
    resumed = device_run.parent / "tiny_resumed"
    shutil.copytree(device_run, resumed)  # as if the run had stopped right after epoch 0
    shutil.copy(resumed / "checkpoints" / "epoch_0000.pt", resumed / "checkpoints" / "latest.pt")
    (resumed / "checkpoints" / "epoch_0001.pt").unlink()
    search(data_dir, device_run.parent, "resumed", "--resume=True")
    assert metrics_without_timing(resumed) == metrics_without_timing(device_run)


def trainer_on(device: torch.device, data_dir: Path) -> object:
    args = config.parse_args([*paper_rnn_args(), *SEARCH, f"--data_dir={data_dir}"])
    return build_trainer(args, device, None)


def test_device_checkpoint_loads_on_the_cpu_and_back(device_run: Path, data_dir: Path, tmp_path: Path) -> None:
    written = device_run / "checkpoints" / "latest.pt"
    on_cpu = load_checkpoint(written, CPU)
    assert all(t.device.type == "cpu" for t in on_cpu["model"].values())
    cpu_trainer = trainer_on(CPU, data_dir)
    cpu_trainer.load_state_dict(on_cpu)
    dev_trainer = trainer_on(DEVICE, data_dir)
    dev_trainer.load_state_dict(load_checkpoint(written, DEVICE))  # restores the RNG states from device tensors too
    arch = cpu_trainer.space.random_arch(torch.Generator().manual_seed(0))
    cpu_ppl = cpu_trainer.space.evaluate(arch, "valid")["valid_ppl"]
    assert dev_trainer.space.evaluate(arch, "valid")["valid_ppl"] == pytest.approx(cpu_ppl, rel=1e-4)

    again = tmp_path / "from_cpu.pt"  # written on the CPU, loaded back onto the device
    torch.save(cpu_trainer.state_dict(), again)
    back = trainer_on(DEVICE, data_dir)
    back.load_state_dict(load_checkpoint(again, DEVICE))
    assert next(back.space.model.parameters()).device.type == DEVICE.type
    original = load_checkpoint(written, CPU)
    for key, value in back.state_dict()["model"].items():
        assert torch.equal(value.cpu(), original["model"][key]), key
    for key, value in back.reg.state_dict().items():
        assert torch.equal(value.cpu(), original["regularizer"][key]), key
    moments = [s["momentum_buffer"] for s in back.shared_optim.state.values() if s.get("momentum_buffer") is not None]
    assert all(m.device.type == DEVICE.type for m in moments)
    assert back.space.evaluate(arch, "valid")["valid_ppl"] == pytest.approx(cpu_ppl, rel=1e-4)


def test_amp_search_on_the_device_stays_close_to_fp32(device_run: Path, data_dir: Path) -> None:
    amp = search(data_dir, device_run.parent, "amp", "--amp=True", "--max_epoch=1")
    first, fp32 = records(amp)[0], records(device_run)[0]
    assert math.isfinite(first["valid_ppl"]) and first["nonfinite_losses"] == 0
    assert first["shared_ce"] == pytest.approx(fp32["shared_ce"], rel=5e-2)


@pytest.mark.slow
def test_compiled_search_on_the_device_stays_close_to_eager(device_run: Path, data_dir: Path) -> None:
    if DEVICE.type == "cpu" and shutil.which("cc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler")
    compiled = search(data_dir, device_run.parent, "compiled", "--compile=True", "--max_epoch=1")
    first, eager = records(compiled)[0], records(device_run)[0]
    assert first["nonfinite_losses"] == 0
    assert first["shared_ce"] == pytest.approx(eager["shared_ce"], rel=2e-2)
    assert first["valid_ppl"] == pytest.approx(eager["valid_ppl"], rel=2e-2)
