"""Capacity planning: FLOPs and memory of one training step, simulated on the meta device.

:func:`simulate` builds the configured model on PyTorch's ``meta`` device (shapes, no
data) and runs one micro-batch forward, loss and backward under three interceptors:

- a ``TorchFunctionMode`` that emulates CUDA autocast (Linear, conv, matmul and SDPA in
  bf16; LayerNorm, softmax, interpolation and the other fp32-listed ops in fp32; the
  model's ``fp32_region`` switches it off) and replaces ``F.scaled_dot_product_attention``
  by the aten kernel the GPU would pick (:func:`choose_sdpa_kernel`), so autograd saves what
  that kernel saves;
- a ``TorchDispatchMode`` that counts FLOPs (``torch.utils.flop_counter``'s formulas) and
  tracks every storage an op creates until it dies: the live-bytes curve and its peak;
- ``saved_tensors_hooks`` that count the bytes autograd keeps for backward, once per storage.

Work is charged to the region names the trainer's timing produces (``forward/vrt/stage1``,
``backward/vrt/stage1``, ``backward/vrt/stage1/recompute``...): the model's own backward
instrumentation (:mod:`trainer.models.instrument`) opens and closes the backward regions,
so a region here is the same span as a measured one.

The step's peak = parameters + optimizer state + gradients held from earlier micro-batches
+ the simulated peak of live tensors (activations, transients and the gradients as they
appear) + the input batch.

The files, each importing only those above it:

- ``sdpa``: which SDPA kernel a GPU (or the CPU) takes, and calling it;
- ``regions``: the open region at each op, sums up the region tree;
- ``autocast``: the autocast emulation (the ``TorchFunctionMode``);
- ``counting``: FLOPs and live storages per op (the ``TorchDispatchMode``), ``count_flops``;
- ``optimizer_memory``: optimizer state and the optimizer step's temporaries;
- ``report``: :class:`Plan` and the text table;
- ``simulation``: :func:`simulate`, one micro-batch of a config;
- ``run_start``: the FLOPs the trainer records at the start of a run;
- ``fitting``: :func:`fit`, whether the step fits a GPU and the largest batch.

This module re-exports their public names.
"""

from __future__ import annotations

from trainer.plan.counting import count_flops
from trainer.plan.fitting import MAX_SEARCH_BATCH, RESERVE_BYTES, fit
from trainer.plan.optimizer_memory import (
    BNB_BLOCKSIZE,
    BNB_MIN_8BIT_SIZE,
    optimizer_state_bytes,
    optimizer_transient_bytes,
)
from trainer.plan.report import Plan, RegionPlan, format_plan
from trainer.plan.run_start import region_flops_for_run_start
from trainer.plan.sdpa import KERNELS, SdpaCall, choose_sdpa_kernel, run_sdpa_kernel
from trainer.plan.simulation import Shape, config_shape, precision_of, simulate

__all__ = [
    "BNB_BLOCKSIZE",
    "BNB_MIN_8BIT_SIZE",
    "KERNELS",
    "MAX_SEARCH_BATCH",
    "RESERVE_BYTES",
    "Plan",
    "RegionPlan",
    "SdpaCall",
    "Shape",
    "choose_sdpa_kernel",
    "config_shape",
    "count_flops",
    "fit",
    "format_plan",
    "optimizer_state_bytes",
    "optimizer_transient_bytes",
    "precision_of",
    "region_flops_for_run_start",
    "run_sdpa_kernel",
    "simulate",
]
