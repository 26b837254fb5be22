"""The heads a model of speechkit has, in one table: what trains them (speechkit/models/base.py) and what serves them
(the handler's `served_as`) both read it.

head -> (transformers' Auto class that loads a model with it, the name of transformers' table of the model types that
have it (in `transformers.models.auto.modeling_auto`), the stock pipeline that serves it: the speechkit task's own
pipeline tag, speechkit/tasks/; None: not served by the handler).

Plain data (no import at all): the config checks (speechkit/validation.py) ask a model family its heads before torch
is imported, and the handler (code/inference.py, which has no speechkit) carries this table in itself.
"""

HEADS = {"ctc": ("AutoModelForCTC", "MODEL_FOR_CTC_MAPPING_NAMES", "automatic-speech-recognition"),
         "classification": ("AutoModelForAudioClassification", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
                            "audio-classification"),
         # one output per speaker and frame (diarization): not served
         "frames": ("AutoModelForAudioFrameClassification", "MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES",
                    None),
         # an encoder-decoder generating tokens (Whisper, Moonshine)
         "seq2seq": ("AutoModelForSpeechSeq2Seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
                     "automatic-speech-recognition")}
