"""AdaptiveLinear (each policy, linear policy network) against ``nn.Linear`` of the same size.

Forward + backward (gradients w.r.t. the input and every parameter) of
``AdaptiveLinear(n, n, policy=p, policy_net="linear")`` for p in output / input /
io / sva, against ``nn.Linear(n, n)`` on the same batch, interleaved in the same
run; plus the activation memory each keeps for backward.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adaptive import POLICIES, AdaptiveLinear
from .measure import make_row, ratio_stats, saved_bytes, time_interleaved

MIB = 2.0**20


def run(quick: bool = False, repeats: int = 5, progress: bool = True,
        device: torch.device | None = None) -> dict:
    """Benchmark AdaptiveLinear; returns the shared result dict."""
    from tqdm.auto import tqdm

    n, batch = (32, 64) if quick else (512, 1024)
    repeats = min(repeats, 2) if quick else repeats
    warmup, min_sample = (1, 0.002) if quick else (2, 0.05)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict] = []
    for policy in tqdm(POLICIES, desc="adaptive_linear", disable=not progress, leave=False):
        rows += _measure(policy, n, batch, device, repeats, warmup, min_sample)
    notes = [
        "Adaptive layers compute a policy (a Linear from the input to the adaptation "
        "sizes) besides the main product, so ratios above 1 are their price; SVA does two "
        "n x k products (k = n here). saved for backward counts the saved input batch "
        "(parameters excluded).",
        f"device {device}, {torch.get_num_threads()} threads, batch {batch}, n = m = {n}, "
        f"float32, {repeats} interleaved repeats after {warmup} warm-up calls.",
    ]
    return {"name": "adaptive_linear", "rows": rows, "notes": notes}


def _measure(
    policy: str, n: int, batch: int, device: torch.device, repeats: int, warmup: int,
    min_sample: float,
) -> list[dict]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    layer = AdaptiveLinear(n, n, policy=policy, policy_net="linear", device=device)
    lin = nn.Linear(n, n, device=device)
    x = torch.randn(batch, n, generator=gen).to(device).requires_grad_()
    g = torch.randn(batch, n, generator=gen).to(device)
    wrt_a = (x, *layer.parameters())
    wrt_l = (x, *lin.parameters())
    times = time_interleaved(
        {
            "adaptive": lambda: torch.autograd.grad(layer(x), wrt_a, g),
            "linear": lambda: torch.autograd.grad(lin(x), wrt_l, g),
        },
        repeats=repeats, warmup=warmup, min_sample_s=min_sample, device=device,
    )
    case = f"AdaptiveLinear({n},{n}) policy={policy} policy_net=linear"
    params = [*layer.parameters(), *lin.parameters()]  # the saved input x counts
    return [
        make_row(
            case, "fwd+bwd time", "ms", times["adaptive"].scaled(1e3), f"nn.Linear({n},{n})",
            times["linear"].scaled(1e3), ratio_stats(times["adaptive"], times["linear"]),
            parameters=sum(p.numel() for p in layer.parameters()),
            baseline_parameters=sum(p.numel() for p in lin.parameters()),
        ),
        make_row(
            case, "saved for backward", "MiB", saved_bytes(lambda: layer(x), params) / MIB,
            f"nn.Linear({n},{n})", saved_bytes(lambda: lin(x), params) / MIB,
        ),
    ]
