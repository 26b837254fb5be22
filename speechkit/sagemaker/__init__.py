"""Amazon SageMaker: remote training (`hw=sagemaker`) and real-time endpoints (deploy.py).

- launch.py     `python train.py ... hw=sagemaker`: submits a training job with the SageMaker Python SDK 3; the
                images and requirements both kinds of container take
- entry.py      the job's entry point inside the container: the same config, the container's GPU, SM_* paths
- endpoint.py   `python deploy.py`: model.tar.gz packed (the handler bundled in), uploaded, the endpoint created

The inference handler that deploy.py ships (code/inference.py) and serve.py serves is the inference runtime,
speechkit/inference/, bundled into one file that imports nothing from speechkit (speechkit/inference/bundle.py).
Only entry.py and that file run inside SageMaker containers.
"""
