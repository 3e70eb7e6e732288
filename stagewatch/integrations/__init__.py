"""Framework callbacks: zero-code timing for Lightning and the Hugging Face Trainer.

``stagewatch.integrations.lightning.StagewatchCallback`` (``pip install
'stagewatch[lightning]'``) and ``stagewatch.integrations.hf.StagewatchCallback``
(``pip install 'stagewatch[hf]'``). Importing :mod:`stagewatch` imports neither framework;
only importing one of these two modules does. See docs/own-model.md.
"""
