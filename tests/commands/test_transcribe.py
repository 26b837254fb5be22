"""transcribe.py on real recordings: windows read from the file, word timestamps, txt/json/srt/vtt, bad files."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from conftest import TINY, compose, run_cli, speak
from speechkit.rundir import RunDir
from speechkit.tasks import make_task
from speechkit.kinds.ctc.vocab import build_vocab, write_vocab

pytestmark = pytest.mark.slow  # end to end: trainings, subprocesses, servers (docs/contributing.md, Tests)

SENTENCES = ["the cat sees a dog", "my old boat is red", "a bird in the park", "one tree by the sea"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random-init model saved as training ships one (weights + processor): near-random text, real path."""
    root = tmp_path_factory.mktemp("tiny_model")
    cfg = OmegaConf.to_object(compose("train", ["model=tiny", *TINY, "run_dir=/x"]))
    task = make_task(cfg)
    task.model_config(cfg.model)  # a CTC head: the character vocab is its own
    task.kind.vocab = build_vocab(SENTENCES, cfg.task.vocab)
    write_vocab(task.kind.vocab, RunDir(str(root)).vocab)
    import torch

    torch.manual_seed(0)
    model = task.build_model(cfg.model, str(root))
    model.save_pretrained(root / "model")
    task.save(str(root / "model"))
    return root / "model"


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """About 12 s: four spoken sentences with pauses between them, at espeak's 22.05 kHz."""
    root = tmp_path_factory.mktemp("recording")
    parts = []
    for i, text in enumerate(SENTENCES):
        audio, rate = sf.read(speak(text, root / f"s{i}.wav"), dtype="float32")
        parts += [audio, np.zeros(int(1.2 * rate), np.float32)]
    path = root / "talk.wav"
    sf.write(path, np.concatenate(parts), rate)
    return path


def test_a_short_clip_reads_as_the_stock_pipeline_reads_it(model_dir, recording, tmp_path):
    """One window (the clip is shorter than chunk_length_s): exactly the pipeline's transcript of the file."""
    from transformers import pipeline

    clip = recording.parent / "s0.wav"
    done = run_cli("transcribe.py", f"model_dir={model_dir}", f"audio={clip}", f"output_dir={tmp_path}", "hw=cpu",
                   "progress_bar=false")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "s0.json").read_text())
    assert result["text"] == pipeline("automatic-speech-recognition", model=str(model_dir))(str(clip))["text"]
    assert result["text"] and result["words"]


def test_a_long_recording_in_windows_with_timestamps_and_subtitles(model_dir, recording, tmp_path):
    done = run_cli("transcribe.py", f"model_dir={model_dir}", f"audio={recording}", f"output_dir={tmp_path}",
                   "chunk_length_s=4", "stride_length_s=1", "batch_size=2", "hw=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    duration = sf.info(str(recording)).duration
    result = json.loads((tmp_path / "talk.json").read_text())
    assert result["duration_s"] == pytest.approx(duration, abs=0.05)
    assert "real-time factor" in done.stdout and result["real_time_factor"] > 0
    assert re.search(r"talk\.wav: .*\| 0/\d+ \[.*window/s", done.stderr)  # the per-file progress bar, by windows
    starts = [w["start"] for w in result["words"]]
    assert starts == sorted(starts) and all(0 <= w["start"] <= w["end"] <= duration + 0.05 for w in result["words"])
    assert (tmp_path / "talk.txt").read_text().strip() == result["text"]
    text = " ".join(result["text"].split())  # a near-random model may emit two word delimiters in a row
    assert " ".join(w["word"] for w in result["words"]) == text

    stamp = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"
    srt = (tmp_path / "talk.srt").read_text()
    cues = re.findall(rf"^(\d+)\n{stamp} --> {stamp}\n(.+)$", srt, flags=re.M)
    assert cues and [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    seconds = [(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000) for c in cues
               for h, m, s, ms in (c[1:5], c[5:9])]
    assert seconds == sorted(seconds) and seconds[-1] <= duration + 0.05
    assert " ".join(c[9] for c in cues) == text  # every word in exactly one cue
    vtt = (tmp_path / "talk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n") and len(re.findall(rf"{stamp} --> {stamp}", vtt)) == len(cues)


def test_an_unreadable_file_is_reported_and_skipped_and_the_rest_go_on(model_dir, recording, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes((recording.parent / "s1.wav").read_bytes())
    (folder / "b.wav").write_bytes(b"RIFF not really audio" * 20)
    done = run_cli("transcribe.py", f"model_dir={model_dir}", f"audio={folder}", "hw=cpu", "progress_bar=false")
    assert done.returncode == 1  # something failed: said by the exit status
    assert (folder / "a.txt").is_file() and (folder / "a.srt").is_file() and not (folder / "b.txt").exists()
    assert re.search(r"skipped .*b\.wav: not readable audio", done.stdout)
    assert "Transcribed 1 of 2 file(s)" in done.stdout and "1 failed" in done.stdout


def test_nothing_to_transcribe_is_refused_naming_the_key(model_dir, tmp_path):
    done = run_cli("transcribe.py", f"model_dir={model_dir}", f"audio={tmp_path / 'nothing*.wav'}", "hw=cpu")
    assert done.returncode == 2 and "audio=" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("chunk_s,stride_s,seconds", [(20.0, 4.0, 61.0), (4.0, 4.0 / 6, 10.0), (4.0, 4.0 / 6, 2.1)])
def test_windows_cover_a_recording_once_whatever_the_rounding_of_their_bounds(chunk_s, stride_s, seconds, tmp_path):
    """The new parts of the windows tile the recording from 0 to its end, each window at most chunk_s long, also
    where a window's bounds fall between two samples (a 4 s window with 4/6 s of context)."""
    from speechkit.recordings import windows
    from speechkit.data.audio import open_recording

    sf.write(tmp_path / "a.wav", np.zeros(int(seconds * 16000), np.float32), 16000)
    parts = list(windows(open_recording(str(tmp_path / "a.wav"), 16000), 16000, chunk_s, stride_s))
    assert parts[0][0] == 0.0 and parts[-1][1] == pytest.approx(seconds, abs=1e-3)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(parts, parts[1:]))
    assert all(samples.size <= round(chunk_s * 16000) + 1 for _, _, _, samples in parts)
    assert all(left == pytest.approx(max(0.0, start - stride_s)) for start, _, left, _ in parts)


def test_a_folder_tree_keeps_every_recordings_outputs_apart(model_dir, recording, tmp_path):
    """a/x.wav and b/x.wav under output_dir keep their folders; x.wav and x.flac in one folder keep their
    extensions: no output replaces another."""
    from speechkit.commands import transcribe

    clip, rate = sf.read(recording.parent / "s1.wav", dtype="float32")
    tree = tmp_path / "in"
    for name in ("a/x.wav", "b/x.wav", "a/y.wav", "a/y.flac"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tree / name, clip[: len(clip) // (2 if name.startswith("b") else 1)], rate)
    out = tmp_path / "out"
    done = transcribe.run(compose("transcribe", [f"model_dir={model_dir}", f"audio={tree}", f"output_dir={out}",
                                                 "hw=cpu", "progress_bar=false"]))
    assert len(done["done"]) == 4 and not done["failed"]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.json"))
    assert written == ["a/x.json", "a/y.flac.json", "a/y.wav.json", "b/x.json"]
    durations = {name: json.loads((out / name).read_text())["duration_s"] for name in written}
    assert durations["a/x.json"] == pytest.approx(2 * durations["b/x.json"], abs=0.01)  # each its own recording


@pytest.fixture(scope="module")
def paused(tmp_path_factory):
    """Two spoken sentences apart, in about 30 s, two thirds of it silence: 3 s, a sentence, 20 s, a sentence,
    2 s, at espeak's 22.05 kHz (the detector hears it at 16 kHz). Returns the file and where each sentence is."""
    root = tmp_path_factory.mktemp("paused")
    parts, spoken, at = [], [], 3.0
    first, rate = sf.read(speak(SENTENCES[0], root / "a.wav"), dtype="float32")
    second, _ = sf.read(speak(SENTENCES[1], root / "b.wav"), dtype="float32")
    for silence_s, audio in ((3.0, first), (20.0, second)):
        parts += [np.zeros(int(silence_s * rate), np.float32), audio]
        at = sum(p.size for p in parts) / rate
        spoken.append((at - audio.size / rate, at))
    parts.append(np.zeros(2 * rate, np.float32))
    sf.write(root / "paused.wav", np.concatenate(parts), rate)
    return root / "paused.wav", spoken


def test_vad_transcribes_the_speech_alone_and_its_timestamps_land_where_it_was_said(model_dir, paused, tmp_path):
    """vad=true: the detector finds the two sentences (its 0.2 s margin around each), only they are transcribed,
    every word is placed inside the sentence it came from (none in the 20 s pause) and the JSON says where the
    speech was; a recording with no speech gives an empty transcript, not an error."""
    path, spoken = paused
    done = run_cli("transcribe.py", f"model_dir={model_dir}", f"audio={path}", f"output_dir={tmp_path}", "hw=cpu",
                   "progress_bar=false", "vad=true")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "paused.json").read_text())
    regions = result["speech_regions"]
    assert len(regions) == 2 and result["duration_s"] == pytest.approx(spoken[1][1] + 2, abs=0.05)
    for (start, end), (said_from, said_to) in zip(regions, spoken):
        assert said_from - 0.45 <= start <= said_from + 0.1 and said_to - 0.1 <= end <= said_to + 0.45
    assert result["words"] and result["text"].strip()
    for w in result["words"]:
        assert any(start - 1e-3 <= w["start"] <= w["end"] <= end + 1e-3 for start, end in regions), w
    assert {any(start <= w["start"] < end for w in result["words"]) for start, end in regions} == {True}
    assert result["speech_s"] == pytest.approx(sum(b - a for a, b in regions), abs=1e-3)

    silence = tmp_path / "silence.wav"
    sf.write(silence, np.random.default_rng(0).normal(0, 1e-4, 5 * 16000).astype(np.float32), 16000)
    done = run_cli("transcribe.py", f"model_dir={model_dir}", f"audio={silence}", f"output_dir={tmp_path}",
                   "hw=cpu", "progress_bar=false", "vad=true")
    assert done.returncode == 0, done.stderr[-3000:]
    quiet = json.loads((tmp_path / "silence.json").read_text())
    assert quiet["text"] == "" and quiet["words"] == [] and quiet["speech_regions"] == []
    assert quiet["duration_s"] == pytest.approx(5.0, abs=1e-3)


def test_speech_regions_are_packed_without_their_pauses_and_mapped_back(paused):
    """Regions are packed into windows of at most the given seconds of speech; a window's samples are its regions'
    samples back to back, and a time in the window maps back to the recording (where two regions meet: the next
    one's start, or the first one's end for a closing time)."""
    from speechkit.data.audio import decode, open_recording
    from speechkit.vad import packed

    first, second = packed([(1.0, 3.0), (10.0, 12.5), (13.0, 16.0)], 5.0)
    assert first.regions == [(1.0, 3.0), (10.0, 12.5)] and second.regions == [(13.0, 16.0)]
    assert first.duration_s == 4.5
    assert [first.to_recording(t) for t in (0.0, 0.5, 2.0, 3.5, 4.5)] == [1.0, 1.5, 10.0, 11.5, 12.5]
    assert first.to_recording(2.0, closing=True) == 3.0 and second.to_recording(1.0) == 14.0

    audio = decode(str(paused[0]), 16000)
    samples = first.samples(open_recording(str(paused[0]), 16000))
    assert samples.size == pytest.approx(4.5 * 16000, abs=2)
    assert np.allclose(samples[:32000], audio[16000:48000], atol=1e-6)
    assert np.allclose(samples[-40000:], audio[160000:200000], atol=1e-6)


def test_regions_found_section_by_section_are_those_of_one_run_over_the_recording(tmp_path):
    """The detector hands regions on section by section, each section closed in the middle of a pause of 1 s or
    more, while it reads on: over 50 s of sentences apart by pauses of 0.15 to 3 s (some regions split at the 3 s
    longest), the regions are those of silero-vad's state machine run once over all the probabilities."""
    from speechkit.data.audio import decode
    from speechkit.vad import FRAME, RATE, SpeechDetector, section_end

    rate, parts = 16000, []
    pauses = [0.15, 0.6, 1.2, 3.0, 0.3, 2.0, 0.8, 1.5, 0.15, 2.5]
    for i, pause in enumerate(pauses * 2):
        said = decode(str(speak(SENTENCES[i % len(SENTENCES)] + " and " + SENTENCES[(i + 1) % len(SENTENCES)],
                                tmp_path / f"s{i}.wav")), rate)
        parts += [said, np.zeros(int(pause * rate), np.float32)]
    path = tmp_path / "pauses.wav"
    sf.write(path, np.concatenate(parts), rate)
    detector = SpeechDetector()
    probabilities, total = detector.probabilities(str(path))
    whole = [(a / RATE, b / RATE) for a, b in detector.state_machine(probabilities, total, 3.0)]
    found = detector.regions(str(path), 3.0)
    assert list(found) == whole and found.found == whole and found.total == total
    assert len(whole) >= 2 * len(pauses) and total > 3 * 512 * FRAME  # several blocks, so several sections
    assert section_end(probabilities[:512]) > 0  # the first block already closes a section
    assert max(b - a for a, b in whole) <= 3.0 and all(a2 >= b1 for (_, b1), (a2, _) in zip(whole, whole[1:]))


def test_the_detector_reads_a_recording_block_by_block_as_one_call_would(paused, tmp_path):
    """The speech probabilities read in 16 s blocks from the file, the LSTM state and context carried across them,
    are silero-vad's own for the whole recording at once (bit for bit, at its own 16 kHz: resampled block by block,
    the samples at a block's edges may differ in their last bits)."""
    from importlib.resources import files

    from silero_vad.sequence_vad import SileroVADSequence
    from speechkit.data.audio import decode
    from speechkit.vad import MODEL_FILE, SpeechDetector

    path = tmp_path / "16k.wav"
    sf.write(path, decode(str(paused[0]), 16000), 16000, subtype="FLOAT")
    probabilities, total = SpeechDetector().probabilities(str(path))
    audio = decode(str(path), 16000)
    whole = SileroVADSequence(str(files("silero_vad.data") / MODEL_FILE)).audio_forward(audio)
    assert total == audio.size and total > 512 * 512  # more than one block
    assert np.array_equal(probabilities, whole)
