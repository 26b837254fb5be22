"""Amazon SageMaker: remote training (`hw=sagemaker`) and what deploy.py (speechkit/commands/deploy.py) needs of
SageMaker's images and requirements.

- launch.py     `python train.py ... hw=sagemaker`: submits a training job with the SageMaker Python SDK 3
- entry.py      the job's entry point inside the container: the same config, the container's GPU, SM_* paths

The inference handler that deploy.py ships (code/inference.py) and serve.py serves is the inference runtime,
speechkit/inference/, bundled into one file that imports nothing from speechkit (speechkit/inference/bundle.py).
Only entry.py and that file run inside SageMaker containers.
"""
