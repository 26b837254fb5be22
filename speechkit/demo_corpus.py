"""The offline demo corpus (dataset.source=demo): short sentences spoken by espeak-ng, written as an audiofolder.

Sentences are drawn from a small seeded grammar, so the held-out test sentences are new combinations of words
the model has heard, never sentences it trained on. Several voices, speeds and pitches make it more than
memorising one waveform per word. Generation is deterministic for a config and cached: the second run reads
the folder back in a second.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import List, Tuple

from tqdm.auto import tqdm

from speechkit.config import ConfigError, DatasetConfig

log = logging.getLogger(__name__)
GENERATOR_VERSION = 1  # bump when the grammar or the synthesis changes, to invalidate old caches

# A tiny grammar per language: determiner + (adjective) + noun + verb + determiner + noun (+ place).
GRAMMARS = {
    "en": {
        "det": ["the", "a", "my", "your", "this", "that", "one", "every"],
        "adj": ["red", "big", "small", "old", "green", "happy", "quiet", "fast", "cold", "bright"],
        "noun": ["cat", "dog", "bird", "man", "woman", "child", "car", "house", "tree", "river", "boat", "book",
                 "phone", "table", "garden", "teacher", "doctor", "farmer", "horse", "window"],
        "verb": ["sees", "likes", "finds", "takes", "moves", "paints", "needs", "wants", "holds", "follows",
                 "watches", "carries"],
        "place": ["near the road", "in the park", "at home", "by the sea", "on the hill", "under the bridge"],
    },
    "es": {  # spelt properly, so espeak says "niño", not "nino"; dataset.text.unidecode strips the accents
        "det": ["el", "un", "mi", "tu", "este", "ese", "cada", "otro"],
        "adj": ["rojo", "grande", "viejo", "verde", "feliz", "rápido", "nuevo", "alto", "bueno", "blanco"],
        "noun": ["gato", "perro", "pájaro", "hombre", "niño", "coche", "libro", "árbol", "barco", "teléfono",
                 "caballo", "maestro", "médico", "granjero", "jardín", "camino", "vaso", "zapato", "pueblo", "río"],
        "verb": ["ve", "quiere", "busca", "toma", "mueve", "pinta", "necesita", "lleva", "sigue", "mira",
                 "encuentra", "tiene"],
        "place": ["cerca del camino", "en el parque", "en casa", "junto al mar", "sobre la colina",
                  "bajo el puente"],
    },
}


def _sentence(rng: random.Random, g: dict, language: str) -> str:
    def phrase() -> str:
        if rng.random() < 0.5:
            adj = rng.choice(g["adj"])
            noun = rng.choice(g["noun"])
            # Spanish puts the adjective after the noun.
            return f"{rng.choice(g['det'])} {noun} {adj}" if language == "es" else f"{rng.choice(g['det'])} {adj} {noun}"
        return f"{rng.choice(g['det'])} {rng.choice(g['noun'])}"

    words = [phrase(), rng.choice(g["verb"]), phrase()]
    if rng.random() < 0.3:
        words.append(rng.choice(g["place"]))
    return " ".join(words)


def plan(cfg: DatasetConfig) -> List[Tuple[str, str, str, int, int]]:
    """(split, sentence, voice, speed, pitch) for every utterance, from the seed alone."""
    d = cfg.demo
    if d.language not in GRAMMARS:
        raise ConfigError(f"dataset.demo.language: '{d.language}' has no grammar (choose from {sorted(GRAMMARS)})")
    rng = random.Random(d.seed)
    g = GRAMMARS[d.language]
    sentences: List[str] = []
    seen = set()
    attempts = 0
    while len(sentences) < d.num_train + d.num_test:
        s = _sentence(rng, g, d.language)
        attempts += 1
        if attempts > 100 * (d.num_train + d.num_test):
            raise ConfigError("dataset.demo: the grammar cannot make that many distinct sentences")
        if s not in seen:
            seen.add(s)
            sentences.append(s)
    rows = []
    for i, s in enumerate(sentences):
        split = "test" if i < d.num_test else "train"  # distinct sentences: test ones never appear in train
        rows.append((split, s, rng.choice(list(d.voices)), rng.choice(list(d.speeds)), rng.choice(list(d.pitches))))
    return rows


def corpus_dir(cfg: DatasetConfig) -> str:
    key = json.dumps({"v": GENERATOR_VERSION, **{k: (list(v) if isinstance(v, (list, tuple)) else v)
                                                  for k, v in _demo_fields(cfg).items()}}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser(cfg.demo.cache_dir), f"{cfg.name}-{digest}")


def _demo_fields(cfg: DatasetConfig) -> dict:
    d = cfg.demo
    return {"language": d.language, "voices": list(d.voices), "speeds": list(d.speeds), "pitches": list(d.pitches),
            "num_train": d.num_train, "num_test": d.num_test, "seed": d.seed}


def ensure_corpus(cfg: DatasetConfig) -> str:
    """Path of the generated corpus, generating it first if it is not cached yet."""
    target = corpus_dir(cfg)
    if os.path.isfile(os.path.join(target, "COMPLETE")):
        return target
    if shutil.which("espeak-ng") is None:
        raise ConfigError("dataset.source=demo needs espeak-ng to synthesize speech: "
                          "install it (Debian/Ubuntu: apt-get install espeak-ng), see README.md")
    rows = plan(cfg)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(target))  # renamed into place when complete
    for split in ("train", "test"):
        os.makedirs(os.path.join(tmp, split))

    def synthesize(job):
        i, (split, sentence, voice, speed, pitch) = job
        name = f"{i:05d}.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", os.path.join(tmp, split, name),
               sentence]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"espeak-ng failed for voice '{voice}': {done.stderr.strip()}")
        return split, name, sentence

    log.info("Synthesizing the %s demo corpus (%d clips) into %s", cfg.name, len(rows), target)
    try:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            results = list(tqdm(pool.map(synthesize, enumerate(rows)), total=len(rows), desc="Synthesizing demo corpus"))
        for split in ("train", "test"):
            with open(os.path.join(tmp, split, "metadata.csv"), "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file_name", "transcription"])
                w.writerows((name, text) for s, name, text in results if s == split)
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            json.dump(_demo_fields(cfg), f)
        if os.path.isdir(target):  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target
