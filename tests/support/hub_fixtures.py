"""Local stand-ins for the Hub data sets the recipes read, built the way the Hub serves them.

Each reproduces its data set's schema (column names and types, split names), stores audio as the Hub does
(encoded file bytes inside parquet, at the native rate) and has the kind of broken rows the real one has, so the
recipe configs run through the very same `datasets.load_dataset` code path with only `dataset.path` changed.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
from datasets import Audio, ClassLabel, Dataset, Features, List, Value


def _speech(text: str, voice: str, rate: int = 16000) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
    audio, native = sf.read(io.BytesIO(wav), dtype="float32")
    return np.interp(np.arange(0, len(audio), native / rate), np.arange(len(audio)), audio).astype(np.float32)


def _encode(audio: np.ndarray, fmt: str, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- LibriSpeech (superb)
LIBRISPEECH_LINES = [
    "HE HOPED THERE WOULD BE STEW FOR DINNER", "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP", "HELLO BERTIE ANY GOOD IN YOUR MIND",
    "NUMBER TEN FRESH NELLY IS WAITING ON YOU GOOD NIGHT HUSBAND", "THE MUSIC CAME NEARER AND HE RECALLED THE WORDS",
    "IT'S A LONG WAY TO THE SEA", "YOU'LL SEE, SAID THE OLD MAN", "WHERE ARE THE BOATS? ASKED THE CHILD",
    "THE RIVER RAN QUIET AND COLD", "SHE DIDN'T KNOW THE WAY HOME", "THEY WALKED ON; NOBODY SPOKE",
    "A BIRD SANG IN THE GARDEN", "THE DOOR WAS OPEN", "WE SHALL GO TOMORROW", "THE HOUSE STOOD ON A HILL",
    "HIS FACE WAS PALE", "ALL WAS STILL IN THE TOWN", "THE FIRE BURNED LOW", "NOBODY CAME THAT NIGHT",
]


def make_librispeech(root: Path) -> Path:
    """openslr/librispeech_asr as served in parquet: config `clean`, split `test`, columns
    file/audio/text/speaker_id/chapter_id/id, FLAC bytes at 16 kHz. 20 rows; carving 80/20 gives 16/4."""
    features = Features({"file": Value("string"), "audio": Audio(sampling_rate=16000), "text": Value("string"),
                         "speaker_id": Value("int64"), "chapter_id": Value("int64"), "id": Value("string")})
    rows = {k: [] for k in features}
    for i, line in enumerate(LIBRISPEECH_LINES):
        speaker, chapter = 1089 + i % 3, 134686 + i % 2
        uid = f"{speaker}-{chapter}-{i:04d}"
        rows["file"].append(f"{uid}.flac")
        rows["audio"].append({"bytes": _encode(_speech(line.lower(), "en-us"), "FLAC"), "path": f"{uid}.flac"})
        rows["text"].append(line)
        rows["speaker_id"].append(speaker)
        rows["chapter_id"].append(chapter)
        rows["id"].append(uid)
    (root / "clean" / "test").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(root / "clean" / "test" / "0000.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: clean\n  data_files:\n  - split: test\n    path: clean/test/*.parquet\n---\n")
    return root


# ------------------------------------------------------------------------------------- FLEURS (es_419)
FLEURS_ROWS = {  # raw_transcription, kept?  (near-silent recordings, as FLEURS has, are dropped)
    "train": [("¿Dónde está la estación de trenes?", "donde esta la estacion de trenes"),
              ("El niño comió 3 manzanas rojas.", "el nino comio manzanas rojas"),
              ("La canción, según dicen, es muy antigua.", "la cancion segun dicen es muy antigua"),
              ("Mañana lloverá en el norte del país.", "manana llovera en el norte del pais"),
              ("«Sí», respondió el médico.", "si respondio el medico"),
              (None, None), (None, None)],
    "validation": [("Los barcos llegan al puerto en 2024.", "los barcos llegan al puerto en"),
                   ("¡Qué día tan bonito!", "que dia tan bonito")],
    "test": [("El camino hacia el pueblo es largo.", "el camino hacia el pueblo es largo"),
             ("Ella tiene un perro y dos gatos.", "ella tiene un perro y dos gatos"),
             (None, None)],
}
FLEURS_KEPT = {split: [norm for _, norm in rows if norm] for split, rows in FLEURS_ROWS.items()}


def make_fleurs(root: Path) -> Path:
    """google/fleurs' parquet export: <root>/es_419/{train,validation,test}/0000.parquet, FLEURS' columns and
    types, WAV bytes at 16 kHz; rows marked None are near-silent recordings (peak amplitude <= 1e-4)."""
    genders = ClassLabel(names=["male", "female", "other"])
    features = Features({
        "id": Value("int32"), "num_samples": Value("int32"), "path": Value("string"),
        "audio": Audio(sampling_rate=16000), "transcription": Value("string"), "raw_transcription": Value("string"),
        "gender": genders, "lang_id": ClassLabel(names=["es_419"]), "language": Value("string"),
        "lang_group_id": ClassLabel(names=["western_european_we"]),
    })
    rng = np.random.default_rng(0)
    for split, items in FLEURS_ROWS.items():
        rows = {k: [] for k in features}
        for i, (raw, _) in enumerate(items):
            if raw is None:  # a broken recording: microphone noise floor only
                raw = "Este audio está vacío."
                audio = (rng.standard_normal(16000) * 2e-5).astype(np.float32)
            else:
                audio = _speech(raw, "es-419")
            name = f"{split}_{i}.wav"
            rows["id"].append(1000 + i)
            rows["num_samples"].append(len(audio))
            rows["path"].append(name)
            rows["audio"].append({"bytes": _encode(audio, "WAV"), "path": name})
            rows["transcription"].append(raw.lower())
            rows["raw_transcription"].append(raw)
            rows["gender"].append(i % 2)
            rows["lang_id"].append(0)
            rows["language"].append("Spanish")
            rows["lang_group_id"].append(0)
        folder = root / "es_419" / split
        folder.mkdir(parents=True)
        Dataset.from_dict(rows, features=features).to_parquet(str(folder / "0000.parquet"))
    return root


# ----------------------------------------------------------------------------------- AudioSet (agkphysics)
AUDIOSET_ROWS = {  # (what is spoken, human_labels); "Gush" is a class the test checkpoint does not know
    "train": [("hello there", ["Speech"]), ("one two three", ["Speech", "Music"]), ("la la la la", ["Music"]),
              ("good morning", ["Speech"]), ("do re mi", ["Music", "Speech"]), ("see you", ["Speech"])],
    "test": [("how are you", ["Speech"]), ("la di da", ["Music"]), ("splash", ["Gush"]),
             ("thank you", ["Speech", "Gush"])],
}
AUDIOSET_IDS = {"Speech": "/m/09x0r", "Music": "/m/04rlf", "Gush": "/t/dd00088"}


def make_audioset(root: Path) -> Path:
    """agkphysics/AudioSet as served in parquet: config `balanced` (train = data/bal_train, test = data/eval),
    columns video_id/audio/labels/human_labels, FLAC bytes at 48 kHz (as most of AudioSet is)."""
    features = Features({"video_id": Value("string"), "audio": Audio(), "labels": List(Value("string")),
                         "human_labels": List(Value("string"))})
    for split, folder in (("train", "bal_train"), ("test", "eval")):
        rows = {k: [] for k in features}
        for i, (text, names) in enumerate(AUDIOSET_ROWS[split]):
            vid = f"{split[:2]}{i:09d}"
            rows["video_id"].append(vid)
            rows["audio"].append({"bytes": _encode(_speech(text, "en-us", 48000), "FLAC", 48000),
                                  "path": f"audio/{folder}/{vid}.flac"})
            rows["labels"].append([AUDIOSET_IDS[n] for n in names])
            rows["human_labels"].append(names)
        (root / "data" / folder).mkdir(parents=True)
        Dataset.from_dict(rows, features=features).to_parquet(str(root / "data" / folder / "0000.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: balanced\n  default: true\n  data_files:\n  - split: train\n"
        "    path: data/bal_train/*.parquet\n  - split: test\n    path: data/eval/*.parquet\n---\n")
    return root


def make_ast_checkpoint(root: Path, labels=("Speech", "Music", "Dog")) -> Path:
    """A small randomly initialised ASTForAudioClassification with AudioSet class names, saved with its feature
    extractor as the Hub's MIT/ast-finetuned-audioset-10-10-0.4593 is laid out (config, weights, preprocessor)."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=32, max_length=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={k: i for i, k in enumerate(labels)})
    ASTForAudioClassification(config).save_pretrained(root)
    ASTFeatureExtractor(num_mel_bins=32, max_length=64).save_pretrained(root)
    return root


# ------------------------------------------------------------------------------------------ Whisper (openai)
def make_whisper_checkpoint(root: Path, texts, languages=("en", "es")) -> Path:
    """A small randomly initialised WhisperForConditionalGeneration laid out as the Hub's openai/whisper-* are: its
    config, weights, generation config (the languages and tasks of its prompt, the forced decoder ids the
    checkpoints carry), its processor (a 30 s, 80-bin WhisperFeatureExtractor and its tokenizer)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    from speechkit.models.whisper import build_tokenizer, new_generation_config

    tokenizer = build_tokenizer(list(texts), 30.0)
    ids = tokenizer.convert_tokens_to_ids
    end, start = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500, max_target_positions=64,
                           pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=start,
                           suppress_tokens=None, begin_suppress_tokens=None)
    model = WhisperForConditionalGeneration(config)
    generation = new_generation_config(tokenizer, None, "transcribe", 64)
    generation.forced_decoder_ids = [[1, None], [2, ids("<|transcribe|>")]]  # as the checkpoints ship it
    generation.language = generation.task = None
    generation.max_initial_timestamp_index = 50  # the checkpoints' timestamp settings: it predicts timestamps
    model.generation_config = generation
    model.save_pretrained(root)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(root)
    return root
