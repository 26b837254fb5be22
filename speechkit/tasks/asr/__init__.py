"""task=asr: speech recognition (task.py), its character vocab (vocab.py) and its n-gram LM decoding (decoding.py)."""

from speechkit.tasks.asr.task import SpeechRecognition  # noqa: F401
