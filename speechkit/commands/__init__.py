"""What each top-level script does, one module each, each a `run(cfg)` that cli.run_or_exit calls once the config
has passed its checks: train.py, evaluate.py, inspect_data.py, transcribe.py, diarize.py, serve.py and deploy.py."""
