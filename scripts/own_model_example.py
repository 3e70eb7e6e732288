"""A plain PyTorch loop timed with ``stagewatch.instrument`` and ``timed_loader``.

A small transformer language model (not the bundled VRT model) on random tokens; the run
is what ``docs/own-model.svg`` shows::

    python scripts/own_model_example.py --log-dir /tmp/own --steps 60 --batch 4 --threads 1
    python scripts/screenshot.py --run /tmp/own --out docs/own-model.svg
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import stagewatch


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 128, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.norm(x))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log-dir", default="runs/logs")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    tokens = torch.randint(0, 1000, (args.steps * args.batch, 65))
    loader = DataLoader(TensorDataset(tokens), batch_size=args.batch, shuffle=True)
    model = TinyLM().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

    log = stagewatch.TimingLogger(
        args.log_dir,
        device=device,
        run_name="tiny_lm",
        total_steps=args.steps,
        samples_per_step=args.batch,
        enable_console=False,
    )
    stagewatch.set_global_timing_logger(log)
    stagewatch.instrument(model, depth=2)
    log.mark_step_start()
    for (batch,) in stagewatch.timed_loader(loader, device=device):
        with stagewatch.timed("forward"):
            logits = model(batch[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        with stagewatch.timed("backward"):
            loss.backward()
        with stagewatch.timed("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        log.step(samples=len(batch), scalars={"loss": loss.item(), "lr": 3e-4})
    log.close()
    print(f"wrote {log.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
