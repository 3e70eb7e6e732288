"""stagewatch monitor: reads the JSONL records of runs and shows where step time goes.

Never imports torch.
"""

__version__ = "0.1.0"
