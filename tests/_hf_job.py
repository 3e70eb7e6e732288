"""A tiny GPT-2 (random weights, built from a config: no download) trained by the Hugging
Face Trainer with StagewatchCallback, for the callback tests.

Run as a script under ``torchrun --nproc_per_node 2 tests/_hf_job.py LOG_ROOT OUT_DIR`` it
trains under the Trainer's own DDP on CPU (gloo).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from stagewatch.integrations.hf import StagewatchCallback

BATCH = 4
VOCAB = 64


class IdsDataset(torch.utils.data.Dataset):
    """Random token ids as a causal-LM dataset (no tokenizer)."""

    def __init__(self, n: int = 32, seq: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, seq), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def train(
    log_root: str,
    out_dir: str,
    *,
    max_steps: int = 3,
    accumulate: int = 1,
    checkpointing: bool = False,
    eval_every: int | None = None,
    callback: StagewatchCallback | None = None,
    use_cpu: bool = True,
    **args_kwargs: Any,
) -> Trainer:
    cb = callback or StagewatchCallback(log_root, run_name="gpt2", enable_console=False)
    args = TrainingArguments(
        output_dir=out_dir,
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        gradient_accumulation_steps=accumulate,
        logging_steps=1,
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        save_strategy="no",
        report_to=[],
        use_cpu=use_cpu,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **args_kwargs,
    )
    model = tiny_gpt2()
    if checkpointing:  # torch.utils.checkpoint around each block
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=IdsDataset(),
        eval_dataset=IdsDataset(8) if eval_every else None,
        callbacks=[cb],
    )
    trainer.train()
    return trainer


if __name__ == "__main__":
    done = train(sys.argv[1], sys.argv[2], max_steps=3, accumulate=2, checkpointing=True)
    if done.is_world_process_zero():
        with open(os.path.join(sys.argv[2], "log_history.json"), "w", encoding="utf-8") as f:
            json.dump(done.state.log_history, f)
    # the Trainer leaves its gloo group up; torn down at interpreter exit instead, it can
    # abort the process ("terminate called without an active exception", seen once in CI)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
