"""Amazon SageMaker: remote training (`hw=sagemaker`), and the inference handler that deploy.py ships and serve.py
serves locally (speechkit/commands/deploy.py, serve.py).

- launch.py     `python train.py ... hw=sagemaker`: submits a training job with the SageMaker Python SDK 3
- entry.py      the job's entry point inside the container: the same config, the container's GPU, SM_* paths
- inference.py  the handler (model_fn/input_fn/predict_fn/output_fn), shipped as code/inference.py

Only entry.py and inference.py run inside SageMaker containers; inference.py imports nothing from speechkit.
"""
