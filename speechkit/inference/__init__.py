"""The inference runtime: a shipped model loaded by its head and run by PyTorch or by onnxruntime, what a request may
hold, and the checks an ONNX export passes before it is served.

- heads.py     the one table of heads: head -> (transformers Auto class, its mapping's name, the pipeline serving it)
- requests.py  input_fn and output_fn: a request's body parsed, its limits, InferenceError (the refusal, with its
               HTTP status)
- onnx.py      the export's file names, their parity and hash checks, onnxruntime sessions, a generating model
               around its three graphs, a CTC model's and a classifier's answers with numpy alone
- handler.py   model_fn, predict_fn and transform: SageMaker's Hugging Face/PyTorch inference toolkit contract
- bundle.py    the four above joined into one file, code/inference.py, which imports nothing of speechkit: what
               deploy.py ships in model.tar.gz and serve.py serves on this machine

The bundled modules import numpy and the standard library at their top (torch, torchcodec, transformers and
onnxruntime inside the functions that need them) and nothing of speechkit but each other. speechkit imports them as
any module: export.py's parity gate, evaluate.py and transcribe.py run an export through speechkit/onnx_export.py,
which takes onnx.py's names and sessions; the model families take heads.py's table (speechkit/models/base.py).
"""
