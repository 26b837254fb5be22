"""Amazon SageMaker: remote training (`hw=sagemaker`), deployment, and the inference handler served locally too.

- launch.py     `python train.py ... hw=sagemaker`: submits a training job with the SageMaker Python SDK 3
- entry.py      the job's entry point inside the container: the same config, the container's GPU, SM_* paths
- deploy.py     `python deploy.py model_dir=...`: model.tar.gz -> model, endpoint config, endpoint
- inference.py  the handler (model_fn/input_fn/predict_fn/output_fn), shipped as code/inference.py
- server.py     `python serve.py model_dir=...`: that handler over HTTP on this machine (/ping, /invocations)

Only entry.py and inference.py run inside SageMaker containers; inference.py imports nothing from speechkit.
"""
