"""The offline demo corpora (dataset.source=demo), spoken by espeak-ng and written as an audiofolder.

- Sentences (speech recognition, column `transcription`): drawn from a small seeded grammar, so the held-out test
  sentences are new combinations of words the model has heard, never sentences it trained on.
- Spoken commands (audio classification, column `label`), when `dataset.demo.words` is set: each clip is one command
  word; the test split is spoken by voices (`dataset.demo.test_voices`) the training split never heard.
- A shifted test set, when `dataset.demo.shifted_voices` is set (dataset=demo_en_shifted): the sentence corpus's test
  sentences spoken by voices its training split never uses, as three splits: `test` (clean), `test_noisy` (white
  noise at `shifted_snr_db`) and `test_reverb` (a simulated room of `shifted_rt60_s`), to see how a model trained
  on the sentences does on other voices, in noise and in a room.
- Conversations (speaker diarization, column `rttm`), when `dataset.demo.speakers` is set: each recording is
  `dataset.demo.turns` turns of sentences between 2 or 3 (as listed) voices, with pauses and some overlapping
  speech, written with its RTTM (who spoke when, from where each turn's speech starts and ends); the test split's
  voice combinations and sentences are never heard in training.

Several voices, speeds and pitches make it more than memorising one waveform per word. Generation is deterministic
for a config and cached: the second run reads the folder back in a second.
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
from contextlib import contextmanager
from typing import List, Tuple

from tqdm.auto import tqdm

from speechkit.config import ConfigError, DatasetConfig

log = logging.getLogger(__name__)
GENERATOR_VERSION = 3  # bump when the grammar or the synthesis changes, to invalidate old caches

# A small grammar per language. Sentences are 3-9 words (1-3.5 s of speech): noun phrase + transitive verb + noun
# phrase, noun phrase + intransitive verb (+ place or adverb), or a short pronoun-led sentence. Every word recurs
# across many sentences, so a held-out sentence is a new combination of words the model has heard.
GRAMMARS = {
    "en": {
        "det": ["the", "a", "my", "your", "his", "her", "our", "their", "this", "that"],
        "adj": ["big", "small", "red", "blue", "green", "old", "new", "happy", "quiet", "dark", "warm", "cold",
                "little", "bright", "soft", "fast"],
        "noun": ["cat", "dog", "bird", "fish", "man", "woman", "child", "boy", "girl", "car", "boat", "house",
                 "tree", "book", "ball", "door", "table", "chair", "river", "garden", "horse", "teacher", "doctor",
                 "farmer", "window", "apple", "letter", "train"],
        "verb_t": ["sees", "likes", "finds", "takes", "holds", "wants", "needs", "opens", "moves", "pushes",
                   "makes", "keeps", "watches", "paints", "follows", "carries"],
        "verb_i": ["runs", "sleeps", "sings", "waits", "jumps", "walks", "falls", "smiles", "swims", "laughs"],
        "adv": ["today", "again", "slowly", "quickly", "now", "often", "later", "there", "here", "tonight"],
        "prep": ["in", "on", "under", "near", "behind", "with"],
        "pron": ["i", "you", "we", "they"],
        "verb_base": ["see", "like", "find", "take", "want", "need", "watch"],
        "adj_after_noun": False,
    },
    "es": {  # spelt properly, so espeak says "niño", not "nino"; dataset.text.unidecode strips the accents
        "det": ["el", "un", "mi", "tu", "su", "este", "ese", "cada", "otro", "nuestro"],
        "adj": ["rojo", "grande", "viejo", "verde", "feliz", "rápido", "nuevo", "alto", "bueno", "blanco",
                "pequeño", "oscuro", "frío", "tranquilo"],
        "noun": ["gato", "perro", "pájaro", "hombre", "niño", "coche", "libro", "árbol", "barco", "teléfono",
                 "caballo", "maestro", "médico", "granjero", "jardín", "camino", "vaso", "zapato", "pueblo", "río",
                 "tren", "puente"],
        "verb_t": ["ve", "quiere", "busca", "toma", "mueve", "pinta", "necesita", "lleva", "sigue", "mira",
                   "encuentra", "tiene"],
        "verb_i": ["corre", "duerme", "canta", "espera", "salta", "camina", "cae", "sonríe", "nada", "ríe"],
        "adv": ["hoy", "otra vez", "despacio", "rápido", "ahora", "mañana", "allí", "aquí", "esta noche"],
        "prep": ["en", "bajo", "cerca de", "detrás de", "con"],
        "pron": ["yo", "tú", "nosotros", "ellos"],
        "verb_base": ["veo", "quiero", "busco", "tomo", "necesito", "miro"],
        "adj_after_noun": True,
    },
}


def _sentence(rng: random.Random, g: dict) -> str:
    def noun_phrase() -> List[str]:
        det, noun = rng.choice(g["det"]), rng.choice(g["noun"])
        if rng.random() < 0.5:
            adj = rng.choice(g["adj"])
            return [det, noun, adj] if g["adj_after_noun"] else [det, adj, noun]
        return [det, noun]

    r = rng.random()
    if r < 0.45:
        words = noun_phrase() + [rng.choice(g["verb_t"])] + noun_phrase()
        if rng.random() < 0.3:
            words.append(rng.choice(g["adv"]))
    elif r < 0.75:
        words = noun_phrase() + [rng.choice(g["verb_i"])]
        words += [rng.choice(g["prep"])] + noun_phrase() if rng.random() < 0.5 else [rng.choice(g["adv"])]
    else:
        words = [rng.choice(g["pron"]), rng.choice(g["verb_base"])] + noun_phrase()
    return " ".join(words)


def plan(cfg: DatasetConfig) -> List[Tuple[str, str, str, int, int]]:
    """(split, sentence or word, voice, speed, pitch) for every utterance, from the seed alone."""
    d = cfg.demo
    if d.words:
        return _command_plan(cfg)
    if d.language not in GRAMMARS:
        raise ConfigError(f"dataset.demo.language: '{d.language}' has no grammar (choose from {sorted(GRAMMARS)})")
    rng = random.Random(d.seed)
    g = GRAMMARS[d.language]
    sentences: List[str] = []
    seen = set()
    attempts = 0
    while len(sentences) < d.num_train + d.num_test:
        s = _sentence(rng, g)
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


def _command_plan(cfg: DatasetConfig) -> List[Tuple[str, str, str, int, int]]:
    """Every word equally often in each split; test clips spoken only by the held-out voices."""
    d = cfg.demo
    test_voices = list(d.test_voices)
    train_voices = [v for v in d.voices if v not in test_voices]
    if not test_voices or not train_voices:
        raise ConfigError("dataset.demo.test_voices: a command corpus needs held-out voices for its test split and "
                          "other voices (dataset.demo.voices) for training")
    rng = random.Random(d.seed)
    rows = []
    for split, count, voices in (("test", d.num_test, test_voices), ("train", d.num_train, train_voices)):
        for i in range(count):
            word = d.words[i % len(d.words)]
            rows.append((split, word, rng.choice(voices), rng.choice(list(d.speeds)), rng.choice(list(d.pitches))))
    return rows


def corpus_dir(cfg: DatasetConfig) -> str:
    key = json.dumps({"v": GENERATOR_VERSION, **{k: (list(v) if isinstance(v, (list, tuple)) else v)
                                                  for k, v in _demo_fields(cfg).items()}}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser(cfg.demo.cache_dir), f"{cfg.name}-{digest}")


def _demo_fields(cfg: DatasetConfig) -> dict:
    d = cfg.demo
    fields = {"language": d.language, "voices": list(d.voices), "speeds": list(d.speeds),
              "pitches": list(d.pitches), "num_train": d.num_train, "num_test": d.num_test, "seed": d.seed}
    if d.words:
        fields.update(words=list(d.words), test_voices=list(d.test_voices))
    if d.speakers:
        fields.update(speakers=list(d.speakers), turns=d.turns)
    if d.shifted_voices:
        fields.update(shifted_voices=list(d.shifted_voices), shifted_snr_db=d.shifted_snr_db,
                      shifted_rt60_s=d.shifted_rt60_s)
    return fields


SHIFTED_SPLITS = ("test", "test_noisy", "test_reverb")


def splits_of(cfg: DatasetConfig) -> Tuple[str, ...]:
    return SHIFTED_SPLITS if cfg.demo.shifted_voices else ("train", "test")


def target_column(cfg: DatasetConfig) -> str:
    """The metadata.csv column with each clip's target: `transcription` (sentences), `label` (commands) or `rttm`
    (conversations: the RTTM file beside the recording)."""
    return "rttm" if cfg.demo.speakers else "label" if cfg.demo.words else "transcription"


def ensure_corpus(cfg: DatasetConfig) -> str:
    """Path of the generated corpus, generating it first if it is not cached yet."""
    target = corpus_dir(cfg)
    if os.path.isfile(os.path.join(target, "COMPLETE")):
        return target
    if shutil.which("espeak-ng") is None:
        raise ConfigError("dataset.source=demo needs espeak-ng to synthesize speech: "
                          "install it (Debian/Ubuntu: apt-get install espeak-ng), see README.md")
    with _building(cfg, target) as tmp:
        if cfg.demo.speakers:
            _write_conversations(cfg, tmp)
        elif cfg.demo.shifted_voices:
            _write_shifted(cfg, tmp)
        else:
            _write_utterances(cfg, tmp)
    return target


def espeak(text: str, voice: str, speed: int, pitch: int, path: str) -> None:
    """`text` spoken by espeak-ng into the WAV file `path` (22.05 kHz mono)."""
    done = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, text],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"espeak-ng failed for voice '{voice}': {done.stderr.strip()}")


@contextmanager
def _building(cfg: DatasetConfig, target: str):
    """A hidden folder (with train/ and test/) to generate the corpus in, marked COMPLETE and renamed into place only
    once everything is written; removed if generation fails."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(target))
    try:
        for split in splits_of(cfg):
            os.makedirs(os.path.join(tmp, split))
        yield tmp
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            json.dump(_demo_fields(cfg), f)
        # Another process (a parallel sweep's other job) may have finished the same corpus first, and may be reading
        # it: a complete corpus is never replaced, ours is dropped instead.
        if not os.path.isfile(os.path.join(target, "COMPLETE")):
            try:
                os.replace(tmp, target)
            except OSError:  # it appeared between the check and the rename
                if not os.path.isfile(os.path.join(target, "COMPLETE")):
                    raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _write_metadata(root: str, header: List[str], rows: List[tuple], splits=("train", "test")) -> None:
    """<root>/<split>/metadata.csv from (split, cell, cell...) rows."""
    for split in splits:
        with open(os.path.join(root, split, "metadata.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(row[1:] for row in rows if row[0] == split)


def _write_utterances(cfg: DatasetConfig, tmp: str) -> None:
    rows = plan(cfg)

    def synthesize(job):
        i, (split, sentence, voice, speed, pitch) = job
        name = f"{i:05d}.wav"
        espeak(sentence, voice, speed, pitch, os.path.join(tmp, split, name))
        return split, name, sentence

    log.info("Synthesizing the %s demo corpus (%d clips)", cfg.name, len(rows))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(tqdm(pool.map(synthesize, enumerate(rows)), total=len(rows), desc="Synthesizing demo corpus"))
    _write_metadata(tmp, ["file_name", target_column(cfg)], results)


def _write_shifted(cfg: DatasetConfig, tmp: str) -> None:
    """The test sentences (with their speeds and pitches) by the shifted voices, then each clip again with white
    noise and reverberated, every draw seeded by the clip."""
    import numpy as np
    import soundfile

    from speechkit.data.augment import add_noise, colored_noise, reverberate, simulated_rir

    d = cfg.demo
    rng = random.Random(d.seed + 1)
    rows = [(split, sentence, rng.choice(list(d.shifted_voices)), speed, pitch)
            for split, sentence, _, speed, pitch in plan(cfg) if split == "test"]
    results = []

    def synthesize(job):
        i, (_, sentence, voice, speed, pitch) = job
        name = f"{i:05d}.wav"
        clean = os.path.join(tmp, "test", name)
        espeak(sentence, voice, speed, pitch, clean)
        audio, rate = soundfile.read(clean, dtype="float32")
        draw = np.random.default_rng([d.seed, i])
        noisy = add_noise(audio, colored_noise(draw, audio.size, 0.0), d.shifted_snr_db)
        soundfile.write(os.path.join(tmp, "test_noisy", name), np.clip(noisy, -1, 1), rate, subtype="PCM_16")
        wet = reverberate(audio, simulated_rir(draw, d.shifted_rt60_s, d.shifted_rt60_s, rate))
        soundfile.write(os.path.join(tmp, "test_reverb", name), np.clip(wet, -1, 1), rate, subtype="PCM_16")
        return name, sentence

    log.info("Synthesizing the %s shifted test set (%d sentences x %d splits)", cfg.name, len(rows),
             len(SHIFTED_SPLITS))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        done = list(tqdm(pool.map(synthesize, enumerate(rows)), total=len(rows), desc="Synthesizing shifted set"))
    for split in SHIFTED_SPLITS:
        results += [(split, name, sentence) for name, sentence in done]
    _write_metadata(tmp, ["file_name", target_column(cfg)], results, SHIFTED_SPLITS)


# ------------------------------------------------------------------------------------------- conversations
SAMPLING_RATE = 16000
PAUSE_S = (0.15, 0.9)  # silence between turns
OVERLAP_SHARE, OVERLAP_S = 0.25, (0.2, 0.7)  # a quarter of the turns start this long before the previous one ends


def conversation_plan(cfg: DatasetConfig) -> List[dict]:
    """Per recording: its split, its voices (each with its own pitch) and its turns (speaker index, sentence, speed,
    pause or overlap before it), from the seed alone. Test recordings use voice combinations and sentences that
    training never has."""
    from itertools import combinations

    d = cfg.demo
    rng = random.Random(d.seed)
    g = GRAMMARS[d.language]
    combos = {k: list(combinations(d.voices, k)) for k in sorted(set(d.speakers))}
    held = {}
    for k, all_k in combos.items():
        rng.shuffle(all_k)
        cut = max(1, len(all_k) // 5)
        if len(all_k) < 2:
            raise ConfigError(f"dataset.demo.voices: {len(d.voices)} voice(s) make too few {k}-speaker combinations "
                              "to hold some out for the test split")
        held[k] = (all_k[cut:], all_k[:cut])  # (train, test)
    sentences = {"train": set(), "test": set()}

    def sentence(split: str) -> str:
        other = "train" if split == "test" else "test"
        while True:
            text = _sentence(rng, g)
            if text not in sentences[other]:
                sentences[split].add(text)
                return text

    recordings = []
    for split, count in (("test", d.num_test), ("train", d.num_train)):
        for _ in range(count):
            k = rng.choice(list(d.speakers))
            voices = list(rng.choice(held[k][split == "test"]))
            pitches = rng.sample(list(d.pitches), k) if len(d.pitches) >= k else [rng.choice(d.pitches)
                                                                                   for _ in range(k)]
            order = list(range(k))
            rng.shuffle(order)
            who = order[:]  # everyone speaks at least once, then anyone but the last speaker
            while len(who) < d.turns:
                who.append(rng.choice([s for s in range(k) if s != who[-1]]))
            turns = [{"speaker": s, "text": sentence(split), "speed": rng.choice(list(d.speeds)),
                      "gap": -rng.uniform(*OVERLAP_S) if i and rng.random() < OVERLAP_SHARE else rng.uniform(*PAUSE_S)}
                     for i, s in enumerate(who[:d.turns])]
            recordings.append({"split": split, "voices": voices, "pitches": pitches, "turns": turns})
    return recordings


def _speech(text: str, voice: str, speed: int, pitch: int, folder: str):
    """One sentence spoken by espeak-ng at 16 kHz, its leading and trailing silence cut."""
    import numpy as np

    from speechkit.data.audio import decode

    fd, path = tempfile.mkstemp(suffix=".wav", dir=folder)
    os.close(fd)
    try:
        espeak(text, voice, speed, pitch, path)
        audio = decode(path, SAMPLING_RATE)
    finally:
        os.remove(path)
    voiced = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[voiced[0]:voiced[-1] + 1] if voiced.size else audio


def _conversation(job):
    """Mix one planned recording; write <name>.wav and <name>.rttm into its split's folder."""
    import numpy as np
    import soundfile

    from speechkit.data.references import write_rttm

    i, rec, root = job
    name = f"conv{i:05d}"
    folder = os.path.join(root, rec["split"])
    clips = [_speech(t["text"], rec["voices"][t["speaker"]], t["speed"], rec["pitches"][t["speaker"]], folder)
             for t in rec["turns"]]
    cursor, placed, ends = 0.3, [], {}
    for turn, clip in zip(rec["turns"], clips):
        start = max(0.0, cursor + turn["gap"], ends.get(turn["speaker"], 0.0) + 0.1)  # one speaker: no self-overlap
        placed.append((start, clip, turn["speaker"]))
        cursor = max(cursor, start + clip.size / SAMPLING_RATE)
        ends[turn["speaker"]] = start + clip.size / SAMPLING_RATE
    mix = np.zeros(int((cursor + 0.4) * SAMPLING_RATE), np.float32)
    turns = []
    for start, clip, speaker in placed:
        at = int(round(start * SAMPLING_RATE))
        mix[at:at + clip.size] += clip
        turns.append((at / SAMPLING_RATE, (at + clip.size) / SAMPLING_RATE, f"spk{speaker}"))
    mix /= max(1.0, float(np.abs(mix).max()) / 0.9)
    soundfile.write(os.path.join(folder, name + ".wav"), mix, SAMPLING_RATE, subtype="PCM_16")
    write_rttm(turns, name, os.path.join(folder, name + ".rttm"))
    return rec["split"], name


def _write_conversations(cfg: DatasetConfig, tmp: str) -> None:
    recordings = conversation_plan(cfg)
    log.info("Synthesizing the %s demo conversations (%d recordings)", cfg.name, len(recordings))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        done = list(tqdm(pool.map(_conversation, [(i, r, tmp) for i, r in enumerate(recordings)]),
                         total=len(recordings), desc="Synthesizing demo conversations"))
    _write_metadata(tmp, ["file_name", "rttm"], [(split, f"{name}.wav", f"{name}.rttm") for split, name in done])
